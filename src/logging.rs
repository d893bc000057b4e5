//! Logging through the `log` facade: to journald (with structured fields such as `NODE`, `POD`,
//! `UNIT` from record key-values) when stderr is connected to the journal, else readable lines
//! on stderr. kube and hyper log through `tracing`, whose `log` feature forwards them here.

use log::{LevelFilter, Log, Metadata, Record};

/// Installs the logger. Library targets (everything outside `vks`) are limited to warnings
/// unless the level is `trace`, so `debug` stays readable.
pub fn init(level: LevelFilter) -> anyhow::Result<()> {
    let inner: Box<dyn Log> = if systemd_journal_logger::connected_to_journal() {
        Box::new(
            systemd_journal_logger::JournalLog::new()?
                .with_syslog_identifier("vks".to_owned())
                .with_extra_fields([("VKS_VERSION", env!("CARGO_PKG_VERSION"))]),
        )
    } else {
        Box::new(
            env_logger::Builder::new()
                .filter_level(LevelFilter::Trace)
                .format_timestamp_millis()
                .write_style(env_logger::WriteStyle::Never)
                .build(),
        )
    };
    log::set_boxed_logger(Box::new(Filtered { inner, level }))?;
    log::set_max_level(level);
    Ok(())
}

struct Filtered {
    inner: Box<dyn Log>,
    level: LevelFilter,
}

impl Filtered {
    fn allows(&self, m: &Metadata<'_>) -> bool {
        let ours = m.target() == "vks" || m.target().starts_with("vks::");
        let limit =
            if ours || self.level == LevelFilter::Trace { self.level } else { self.level.min(LevelFilter::Warn) };
        m.level() <= limit
    }
}

impl Log for Filtered {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        self.allows(m)
    }

    fn log(&self, record: &Record<'_>) {
        if self.allows(record.metadata()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}
