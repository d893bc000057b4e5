package main

import (
	"context"
	"net"
	"strings"
	"testing"

	"k8s.io/client-go/kubernetes/fake"
)

// Direct dials go to loopback addresses only: any other address has no route on the test machine
// (its traffic would leave by the default route).
func TestDirectDialsAreLoopbackOnly(t *testing.T) {
	tun := newTunnel(newNodeWatch(fake.NewSimpleClientset()), true)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := tun.dialBackend(context.Background(), l.Addr().String())
	if err != nil {
		t.Fatalf("dialing a loopback address: %v", err)
	}
	c.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	c, err = tun.dialBackend(context.Background(), net.JoinHostPort("localhost", port))
	if err != nil {
		t.Fatalf("dialing localhost: %v", err)
	}
	c.Close()
	for _, addr := range []string{"10.77.0.9:8080", "192.0.2.1:443", "example.invalid:80"} {
		if _, err := tun.dialBackend(context.Background(), addr); err == nil || !strings.Contains(err.Error(), "not one") {
			t.Errorf("dialing %s: want a refusal, got %v", addr, err)
		}
	}
}
