// Command supervisor is a k3s-compatible supervisor for vks's test bed: the part of a k3s server
// a k3s agent talks to before and besides the Kubernetes API (k3s-io/k3s pkg/server/handlers,
// pkg/server/auth, pkg/nodepassword, pkg/daemons/control/tunnel.go), served next to an upstream
// kube-apiserver, the way RKE2 serves its supervisor on its own port (9345).
//
// What it reproduces, and from where, is listed in k3s/README.md ("The k3s supervisor").
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

type options struct {
	listen       string
	dataDir      string
	serverCA     string
	serverCAKey  string
	clientCA     string
	clientCAKey  string
	kubeconfig   string
	apiPort      int
	certValidity time.Duration
	fallback     bool
}

func main() {
	var o options
	flag.StringVar(&o.listen, "listen", "127.0.0.1:9345", "address of the supervisor (HTTPS)")
	flag.StringVar(&o.dataDir, "data-dir", "", "state: token, node-token, legacy shared keys (required)")
	flag.StringVar(&o.serverCA, "server-ca", "", "server CA certificate (PEM): /cacerts, serving certificates")
	flag.StringVar(&o.serverCAKey, "server-ca-key", "", "server CA key (PEM)")
	flag.StringVar(&o.clientCA, "client-ca", "", "client CA certificate (PEM): client certificates, client-ca.crt")
	flag.StringVar(&o.clientCAKey, "client-ca-key", "", "client CA key (PEM)")
	flag.StringVar(&o.kubeconfig, "kubeconfig", "", "admin kubeconfig of the API server (secrets, nodes, TokenReview)")
	flag.IntVar(&o.apiPort, "apiserver-port", 6443, "the API server's port, published as HTTPSPort in /v1-k3s/config")
	flag.DurationVar(&o.certValidity, "cert-validity", 365*24*time.Hour, "lifetime of the kubelet certificates it signs")
	flag.BoolVar(&o.fallback, "direct-fallback", true,
		"dial a node's kubelet directly when the node has no tunnel (current k3s refuses)")
	flag.Parse()
	for name, v := range map[string]string{"data-dir": o.dataDir, "server-ca": o.serverCA, "server-ca-key": o.serverCAKey,
		"client-ca": o.clientCA, "client-ca-key": o.clientCAKey, "kubeconfig": o.kubeconfig} {
		if v == "" {
			log.Fatalf("--%s is required", name)
		}
	}
	if err := run(o); err != nil {
		log.Fatalf("supervisor: %v", err)
	}
}

func run(o options) error {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return err
	}
	serverCA, err := loadCA(o.serverCA, o.serverCAKey)
	if err != nil {
		return err
	}
	clientCA, err := loadCA(o.clientCA, o.clientCAKey)
	if err != nil {
		return err
	}
	token, err := ensureToken(filepath.Join(o.dataDir, "token"))
	if err != nil {
		return err
	}
	// The full token an agent joins with, as k3s writes server/node-token and server/agent-token.
	full, err := formatToken("server:"+token, serverCA.raw)
	if err != nil {
		return err
	}
	for _, name := range []string{"node-token", "agent-token"} {
		if err := writeFileAtomic(filepath.Join(o.dataDir, name), []byte(full+"\n"), 0o600); err != nil {
			return err
		}
	}
	restConfig, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return fmt.Errorf("reading --kubeconfig %s: %w", o.kubeconfig, err)
	}
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return err
	}
	_, port, err := net.SplitHostPort(o.listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", o.listen, err)
	}
	supervisorPort, _ := strconv.Atoi(port)

	nodes := newNodeWatch(client)
	go nodes.run(ctx)
	passwords := &nodePasswords{client: client, nodes: nodes}
	go passwords.ownerRefs(ctx)
	auth := &authenticator{
		users:     map[string]basicUser{"node": {token, []string{"k3s:agent"}}, "server": {token, []string{"k3s:server"}}},
		clientCAs: pool(clientCA.cert),
		client:    client,
	}
	signer := &signer{serverCA: serverCA, clientCA: clientCA, validity: o.certValidity, dataDir: o.dataDir}
	if err := signer.ensureLegacyKeys(); err != nil {
		return err
	}
	tunnel := newTunnel(nodes, o.fallback)
	h := &handlers{
		auth: auth, passwords: passwords, signer: signer, tunnel: tunnel, nodes: nodes,
		serverCAFile: o.serverCA, clientCAFile: o.clientCA, apiPort: o.apiPort, supervisorPort: supervisorPort,
	}

	serving, err := servingCert(serverCA)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Addr:    o.listen,
		Handler: h.router(),
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{serving},
			// k3s's listener requests a client certificate and lets the authenticator verify it.
			ClientAuth: tls.RequestClientCert,
			MinVersion: tls.VersionTLS12,
		},
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() {
		<-ctx.Done()
		shut, c := context.WithTimeout(context.Background(), 2*time.Second)
		defer c()
		_ = srv.Shutdown(shut)
	}()
	log.Printf("supervisor listening on https://%s (API server port %d, kubelet certificates valid %s)",
		o.listen, o.apiPort, o.certValidity)
	if err := srv.ListenAndServeTLS("", ""); err != nil && err != http.ErrServerClosed {
		return err
	}
	return nil
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}
