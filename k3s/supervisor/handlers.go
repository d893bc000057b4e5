package main

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
)

type handlers struct {
	auth                       *authenticator
	passwords                  *nodePasswords
	signer                     *signer
	tunnel                     *tunnel
	nodes                      *nodeWatch
	serverCAFile, clientCAFile string
	apiPort, supervisorPort    int
}

// router is k3s's pkg/server/handlers/router.go for program "k3s": /cacerts and /ping for anyone;
// HTTP CONNECT for system:masters (the API server's egress selector); /v1-k3s/connect for
// system:nodes; the certificate and CA endpoints for k3s:agent, system:nodes and bootstrap tokens
// of the kubeadm default node group. Anything else: 404 (k3s hands it to the API server).
func (h *handlers) router() http.Handler {
	agentRoles := []string{"k3s:agent", "system:nodes", "system:bootstrappers:kubeadm:default-node-token"}
	authed := map[string]http.Handler{
		"/v1-k3s/serving-kubelet.crt": http.HandlerFunc(h.servingKubeletCert),
		"/v1-k3s/client-kubelet.crt":  http.HandlerFunc(h.clientKubeletCert),
		"/v1-k3s/client-ca.crt":       file(h.clientCAFile),
		"/v1-k3s/server-ca.crt":       file(h.serverCAFile),
		"/v1-k3s/config":              http.HandlerFunc(h.config),
		"/v1-k3s/readyz":              http.HandlerFunc(ok("ok")),
	}
	connect := h.auth.hasRole(h.tunnel, "system:nodes")
	egress := h.auth.hasRole(h.tunnel, "system:masters")
	return http.HandlerFunc(func(rw http.ResponseWriter, req *http.Request) {
		switch {
		case req.Method == http.MethodConnect:
			egress.ServeHTTP(rw, req)
		case req.URL.Path == "/cacerts":
			rw.Header().Set("content-type", "text/plain")
			http.ServeFile(rw, req, h.serverCAFile)
		case req.URL.Path == "/ping":
			ok("pong")(rw, req)
		case req.URL.Path == "/v1-k3s/connect":
			connect.ServeHTTP(rw, req)
		case authed[req.URL.Path] != nil:
			h.auth.hasRole(authed[req.URL.Path], agentRoles...).ServeHTTP(rw, req)
		default:
			http.NotFound(rw, req)
		}
	})
}

func ok(text string) http.HandlerFunc {
	return func(rw http.ResponseWriter, _ *http.Request) {
		rw.Header().Set("Content-Type", "text/plain")
		_, _ = rw.Write([]byte(text))
	}
}

func file(name string) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, req *http.Request) {
		rw.Header().Set("Content-Type", "text/plain")
		http.ServeFile(rw, req, name)
	})
}

func writeJSON(w io.Writer, v any) error { return json.NewEncoder(w).Encode(v) }

// config is the part of /v1-k3s/config (k3s's config.Control as JSON) an agent reads to find the
// API server: HTTPSPort (the API server) and SupervisorPort (this server).
func (h *handlers) config(rw http.ResponseWriter, _ *http.Request) {
	rw.Header().Set("content-type", "application/json")
	_ = writeJSON(rw, map[string]any{"HTTPSPort": h.apiPort, "SupervisorPort": h.supervisorPort,
		"EgressSelectorMode": "agent"})
}

// servingKubeletCert: CN <node>, DNS <node> and localhost, IPs 127.0.0.1 and the k3s-Node-IP
// header's addresses, server auth, signed by the server CA.
func (h *handlers) servingKubeletCert(rw http.ResponseWriter, req *http.Request) {
	name, code, err := h.passwords.validate(req)
	if err != nil {
		sendError(err, rw, req, code)
		return
	}
	ips := []net.IP{net.ParseIP("127.0.0.1")}
	if header := req.Header.Get("k3s-Node-IP"); header != "" {
		for _, v := range strings.Split(header, ",") {
			ip := net.ParseIP(v)
			if ip == nil {
				sendError(fmt.Errorf("invalid node IP address %s", v), rw, req, http.StatusInternalServerError)
				return
			}
			ips = append(ips, ip)
		}
	}
	h.signAndSend(rw, req, h.signer.serverCA, "serving-kubelet.key", certConfig{
		commonName: name, usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		dnsNames: []string{name, "localhost"}, ips: ips,
	})
}

// clientKubeletCert: CN system:node:<node>, O system:nodes, client auth, signed by the client CA.
func (h *handlers) clientKubeletCert(rw http.ResponseWriter, req *http.Request) {
	name, code, err := h.passwords.validate(req)
	if err != nil {
		sendError(err, rw, req, code)
		return
	}
	h.signAndSend(rw, req, h.signer.clientCA, "client-kubelet.key", certConfig{
		commonName: "system:node:" + name, organization: []string{"system:nodes"},
		usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// signAndSend (pkg/server/handlers/handlers.go): a POST whose body x509.ParseCertificateRequest
// accepts (DER) is signed for the CSR's public key; anything else (a GET, a PEM body) is answered
// the legacy way, with a certificate for the shared key and that key appended. The reply is the
// certificate followed by the CA bundle, PEM.
func (h *handlers) signAndSend(rw http.ResponseWriter, req *http.Request, c *ca, legacyKey string, cfg certConfig) {
	var pub crypto.PublicKey
	var keyPEM []byte
	csr, csrErr := parseCSR(req)
	if csrErr == nil {
		pub = csr.PublicKey
	} else {
		var err error
		keyPEM, err = os.ReadFile(h.signer.legacyKeyFile(legacyKey))
		if err != nil {
			sendError(err, rw, req, http.StatusInternalServerError)
			return
		}
		key, err := loadKey(h.signer.legacyKeyFile(legacyKey))
		if err != nil {
			sendError(err, rw, req, http.StatusInternalServerError)
			return
		}
		pub = key.Public()
		fmt.Fprintf(os.Stderr, "%s %s: no CSR (%v): answering with the shared legacy key\n", req.Method, req.URL.Path, csrErr)
	}
	cert, err := h.signer.sign(c, cfg, pub)
	if err != nil {
		sendError(err, rw, req, http.StatusInternalServerError)
		return
	}
	fmt.Fprintf(os.Stderr, "signed %s for %s (serial %x, valid until %s)\n", req.URL.Path, cfg.commonName,
		cert.SerialNumber, cert.NotAfter.Format("2006-01-02T15:04:05Z"))
	_ = pem.Encode(rw, &pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	_ = pem.Encode(rw, &pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw})
	if len(keyPEM) > 0 {
		_, _ = rw.Write(keyPEM)
	}
}

func parseCSR(req *http.Request) (*x509.CertificateRequest, error) {
	if req.Method != http.MethodPost {
		return nil, errors.New("method mismatch")
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificateRequest(body)
}
