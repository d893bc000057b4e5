package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

type ca struct {
	raw  []byte // the PEM file as read (k3s hashes these bytes for the token)
	cert *x509.Certificate
	key  crypto.Signer
}

func loadCA(certFile, keyFile string) (*ca, error) {
	raw, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s holds no PEM certificate", certFile)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certFile, err)
	}
	key, err := loadKey(keyFile)
	if err != nil {
		return nil, err
	}
	return &ca{raw: raw, cert: cert, key: key}, nil
}

func loadKey(file string) (crypto.Signer, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		return nil, fmt.Errorf("%s holds no PEM key", file)
	}
	var k any
	switch block.Type {
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: not a signing key", file)
	}
	return s, nil
}

// ensureToken reads the server token, creating a random one on first start (k3s: server/token).
func ensureToken(file string) (string, error) {
	if b, err := os.ReadFile(file); err == nil && strings.TrimSpace(string(b)) != "" {
		return strings.TrimSpace(string(b)), nil
	}
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	t := hex.EncodeToString(b)
	return t, writeFileAtomic(file, []byte(t+"\n"), 0o600)
}

// formatToken makes K10<hash>::<creds> as k3s's clientaccess.FormatTokenBytes does for a bundle of
// one self-signed CA: the hash is the SHA-256 of the PEM bytes as stored.
func formatToken(creds string, caPEM []byte) (string, error) {
	if len(caPEM) == 0 {
		return "", errors.New("empty CA bundle")
	}
	sum := sha256.Sum256(caPEM)
	return "K10" + hex.EncodeToString(sum[:]) + "::" + creds, nil
}

func writeFileAtomic(file string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}

func newKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

func serial() (*big.Int, error) { return rand.Int(rand.Reader, new(big.Int).SetInt64(math.MaxInt64)) }

// servingCert is the supervisor's own HTTPS certificate, signed by the server CA at start (k3s's
// dynamiclistener does the same for its listener), valid for the loopback names.
func servingCert(c *ca) (tls.Certificate, error) {
	key, err := newKey()
	if err != nil {
		return tls.Certificate{}, err
	}
	sn, err := serial()
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: "k3s", Organization: []string{"k3s"}},
		NotBefore:    time.Now().Add(-time.Minute).UTC(),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour).UTC(),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost", "kubernetes", "kubernetes.default"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der, c.cert.Raw}, PrivateKey: key}, nil
}

// certConfig is what a handler asks to be signed (dynamiclistener's cert.Config, which k3s uses).
type certConfig struct {
	commonName   string
	organization []string
	usages       []x509.ExtKeyUsage
	dnsNames     []string
	ips          []net.IP
}

type signer struct {
	serverCA, clientCA *ca
	validity           time.Duration
	dataDir            string
}

// The legacy shared keys k3s keeps (server/tls/client-kubelet.key, serving-kubelet.key) and sends
// to clients that do not POST a CSR.
func (s *signer) legacyKeyFile(name string) string { return filepath.Join(s.dataDir, name) }

func (s *signer) ensureLegacyKeys() error {
	for _, name := range []string{"client-kubelet.key", "serving-kubelet.key"} {
		f := s.legacyKeyFile(name)
		if _, err := os.Stat(f); err == nil {
			continue
		}
		k, err := newKey()
		if err != nil {
			return err
		}
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return err
		}
		if err := writeFileAtomic(f, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// sign makes a certificate for pub as dynamiclistener's cert.NewSignedCert does: random serial,
// digital signature + key encipherment, the requested extended usages and names, from the CA's
// NotBefore, for the configured validity.
func (s *signer) sign(c *ca, cfg certConfig, pub crypto.PublicKey) (*x509.Certificate, error) {
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: cfg.commonName, Organization: cfg.organization},
		DNSNames:     cfg.dnsNames,
		IPAddresses:  cfg.ips,
		NotBefore:    c.cert.NotBefore,
		NotAfter:     time.Now().Add(s.validity).UTC(),
		KeyUsage:     x509.KeyUsageKeyEncipherment | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  cfg.usages,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, pub, c.key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}
