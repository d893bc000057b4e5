package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/rancher/remotedialer"
)

// tunnel is k3s's TunnelServer (pkg/daemons/control/tunnel.go) with the real remotedialer server:
// agents open /v1-k3s/connect (authenticated as system:node:<name>, the session's client key is
// the node name); the API server's egress selector sends HTTP CONNECT requests for node
// addresses, which are dialed through the node's session at the loopback address and kubelet
// port (the agent dials its own kubelet). Addresses that are no Node's are dialed directly.
//
// One deliberate difference: current k3s refuses a kubelet connection to a known Node that has
// no session; with --direct-fallback (the default here) the supervisor dials it directly, so
// nodes that joined without a tunnel (bootstrap-token nodes of the other tests) stay reachable.
//
// The test bed's own rule: direct dials go to loopback addresses (and "localhost") only. Every
// address of the test bed that the root network namespace can reach is a loopback address; any
// other one (a node in its own network namespace, 10.77.0.K) has no route here and would leave
// the machine by its default route, so it is refused (such nodes are reached through their
// tunnel).
type tunnel struct {
	server   *remotedialer.Server
	nodes    *nodeWatch
	fallback bool
	dialer   net.Dialer
}

func newTunnel(nodes *nodeWatch, fallback bool) *tunnel {
	t := &tunnel{nodes: nodes, fallback: fallback}
	t.server = remotedialer.New(authorizer, func(rw http.ResponseWriter, req *http.Request, code int, err error) {
		log.Printf("Tunnel server error: %d %v", code, err)
		sendError(err, rw, req, code)
	})
	return t
}

// authorizer: the session key of a node is its name (system:node:<name>).
func authorizer(req *http.Request) (string, bool, error) {
	u, ok := userFrom(req)
	if !ok {
		return "", false, nil
	}
	if name, found := strings.CutPrefix(u.name, "system:node:"); found {
		log.Printf("Tunnel session opened by node %s from %s", name, req.RemoteAddr)
		return name, true, nil
	}
	return "", false, nil
}

func (t *tunnel) ServeHTTP(rw http.ResponseWriter, req *http.Request) {
	if req.Method == http.MethodConnect {
		t.serveConnect(rw, req)
		return
	}
	t.server.ServeHTTP(rw, req)
	if u, ok := userFrom(req); ok {
		log.Printf("Tunnel session of %s from %s closed", u.name, req.RemoteAddr)
	}
}

func (t *tunnel) serveConnect(rw http.ResponseWriter, req *http.Request) {
	backend, err := t.dialBackend(req.Context(), req.Host)
	if err != nil {
		sendError(err, rw, req, http.StatusBadGateway)
		return
	}
	hijacker, ok := rw.(http.Hijacker)
	if !ok {
		backend.Close()
		sendError(errors.New("hijacking not supported"), rw, req, http.StatusInternalServerError)
		return
	}
	rw.WriteHeader(http.StatusOK)
	conn, bufrw, err := hijacker.Hijack()
	if err != nil {
		backend.Close()
		return
	}
	pipe(&hijacked{conn: conn, rw: bufrw}, backend)
}

func (t *tunnel) dialBackend(ctx context.Context, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	var nodeName string
	toKubelet := false
	if ip := net.ParseIP(host); ip != nil {
		if name, kubeletPort, found := t.nodes.byIP(ip.String(), t.server.HasSession); found {
			nodeName = name
			toKubelet = port == kubeletPort
		}
	} else {
		nodeName, toKubelet = host, true
	}
	if toKubelet {
		// Through the node's session, at the loopback address: the agent dials its kubelet.
		loopback := net.JoinHostPort("127.0.0.1", port)
		conn, err := t.server.Dialer(nodeName)(ctx, "tcp", loopback)
		if err == nil {
			log.Printf("Tunnel server egress proxy dialing %s via session to node %s (for %s)", loopback, nodeName, addr)
			return conn, nil
		}
		if !t.fallback || !strings.HasPrefix(strings.ToLower(err.Error()), "failed to find session") {
			log.Printf("Tunnel server egress proxy refusing %s: %v", addr, err)
			return nil, err
		}
		log.Printf("Tunnel server egress proxy: node %s has no tunnel session; dialing %s directly", nodeName, addr)
	} else {
		log.Printf("Tunnel server egress proxy dialing %s directly", addr)
	}
	// "localhost" is the one name the test bed uses (the metrics-server APIService's
	// ExternalName Service); it is not resolved through DNS, which could leave the machine.
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		log.Printf("Tunnel server egress proxy refusing to dial %s directly: not a loopback address", addr)
		return nil, errors.New("the test bed dials only loopback addresses directly; " + addr + " is not one")
	}
	return t.dialer.DialContext(ctx, "tcp", addr)
}

// hijacked reads through the buffered reader the HTTP server may already have filled.
type hijacked struct {
	conn net.Conn
	rw   *bufio.ReadWriter
}

func (h *hijacked) Read(p []byte) (int, error)  { return h.rw.Read(p) }
func (h *hijacked) Write(p []byte) (int, error) { return h.conn.Write(p) }
func (h *hijacked) Close() error                { return h.conn.Close() }

// pipe copies both ways until either side ends (k3s's proxy.Proxy).
func pipe(a io.ReadWriteCloser, b io.ReadWriteCloser) {
	var once sync.Once
	done := make(chan struct{})
	closeBoth := func() { a.Close(); b.Close(); close(done) }
	go func() { _, _ = io.Copy(a, b); once.Do(closeBoth) }()
	go func() { _, _ = io.Copy(b, a); once.Do(closeBoth) }()
	<-done
}
