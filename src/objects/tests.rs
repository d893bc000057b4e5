use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::fake::FakeObjects;
use super::*;
use crate::unit::data::Kind;

fn key(kind: Kind, name: &str) -> ObjKey {
    ObjKey { kind, namespace: "ns".into(), name: name.into() }
}

fn counter() -> (Arc<AtomicUsize>, Waker) {
    let n = Arc::new(AtomicUsize::new(0));
    let m = n.clone();
    (
        n,
        Arc::new(move || {
            m.fetch_add(1, Ordering::SeqCst);
        }),
    )
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn one_watch_per_object_shared_by_its_pods_and_changes_wake_them() {
    let clock = Clock::following_tokio(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let fake = Arc::new(FakeObjects::new(clock));
    let objects = Objects::new(fake.clone(), clock);
    let cfg = key(Kind::ConfigMap, "cfg");
    let (n1, w1) = counter();
    let (n2, w2) = counter();
    objects.subscribe("p1", BTreeSet::from([cfg.clone(), key(Kind::Secret, "s")]), w1);
    objects.subscribe("p2", BTreeSet::from([cfg.clone()]), w2);
    assert_eq!(objects.watched(), 2);
    settle().await;
    assert_eq!(objects.state(&cfg), ObjState::Absent);
    assert_eq!(fake.open_watches(), 2, "one watch per object, not per pod");
    let (before1, before2) = (n1.load(Ordering::SeqCst), n2.load(Ordering::SeqCst));
    fake.set(Kind::ConfigMap, "ns", "cfg", &[("k", "v")]);
    settle().await;
    assert!(matches!(objects.state(&cfg), ObjState::Present(d) if d.data["k"] == b"v"));
    assert_eq!(n1.load(Ordering::SeqCst), before1 + 1);
    assert_eq!(n2.load(Ordering::SeqCst), before2 + 1);
    // A pod that goes away stops nothing others need; the last one stops the watch.
    objects.release("p1");
    settle().await;
    assert_eq!(objects.watched(), 1);
    assert_eq!(fake.open_watches(), 1);
    objects.subscribe("p2", BTreeSet::new(), Arc::new(|| {}));
    settle().await;
    assert_eq!(objects.watched(), 0);
    assert_eq!(fake.open_watches(), 0);
}

#[tokio::test(start_paused = true)]
async fn tokens_are_cached_and_refreshed_at_80_percent_of_their_life() {
    let clock = Clock::following_tokio(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let fake = Arc::new(FakeObjects::new(clock));
    let objects = Objects::new(fake.clone(), clock);
    let pod = PodRef { namespace: "ns".into(), name: "p".into(), uid: "u1".into() };
    let spec = TokenSpec { service_account: "default".into(), audience: None, expiration_seconds: 600 };
    let (t1, at) = objects.token(&pod, &spec).await.unwrap();
    assert_eq!(at.duration_since(clock.wall()).unwrap(), Duration::from_secs(480));
    tokio::time::advance(Duration::from_secs(479)).await;
    assert_eq!(objects.token(&pod, &spec).await.unwrap().0, t1, "cached until 80 %");
    tokio::time::advance(Duration::from_secs(1)).await;
    let (t2, _) = objects.token(&pod, &spec).await.unwrap();
    assert_ne!(t1, t2);
    assert_eq!(fake.token_requests().len(), 2);
    // At most a day, however long the token lives.
    let long = IssuedToken {
        token: Token("x".into()),
        expires: clock.wall() + Duration::from_secs(1 << 30),
        ttl_secs: 1 << 30,
    };
    assert_eq!(refresh_time(&long).duration_since(clock.wall()).unwrap(), Duration::from_secs(24 * 3600));
    objects.release("u1");
    objects.token(&pod, &spec).await.unwrap();
    assert_eq!(fake.token_requests().len(), 3, "released with the pod");
}
