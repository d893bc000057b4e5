package main

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log"
	"net/http"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"golang.org/x/crypto/scrypt"
)

// The node-password secrets of k3s (pkg/nodepassword): kube-system/<node>.node-password.k3s,
// type k3s.cattle.io/node-password, immutable, data.hash = scrypt hash of the agent's
// /etc/rancher/node/password. The first machine to ask for a node's certificates creates it; a
// machine whose password does not verify is refused (403). The secret gets an owner reference to
// its Node once that exists, so deleting the Node frees the name (garbage collection).
const secretTypeNodePassword = corev1.SecretType("k3s.cattle.io/node-password")

func secretName(node string) string { return strings.ToLower(node + ".node-password.k3s") }

// k3s pkg/authenticator/hash (SCrypt N=15, r=8, p=1, 64-byte key, 8-byte salt):
// "$1:<salt hex>:15:8:1:<key, raw std base64>".
const hashFormat = "$%d:%x:%d:%d:%d:%s"

func createHash(secret string) (string, error) {
	salt := make([]byte, 8)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	dk, err := scrypt.Key([]byte(secret), salt, 1<<15, 8, 1, 64)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf(hashFormat, 1, salt, 15, 8, 1, base64.RawStdEncoding.EncodeToString(dk)), nil
}

func verifyHash(hash, secret string) error {
	var (
		version, n uint
		r, p       int
		enc        string
		salt       []byte
	)
	if _, err := fmt.Sscanf(hash, hashFormat, &version, &salt, &n, &r, &p, &enc); err != nil {
		return err
	}
	if version != 1 {
		return fmt.Errorf("hash version %d does not match package version 1", version)
	}
	dk, err := base64.RawStdEncoding.DecodeString(enc)
	if err != nil {
		return err
	}
	verify, err := scrypt.Key([]byte(secret), salt, 1<<n, r, p, len(dk))
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare(dk, verify) != 1 {
		return errors.New("hash does not match")
	}
	return nil
}

var errVerifyFailed = errors.New("node password verification failed")

type nodePasswords struct {
	client kubernetes.Interface
	nodes  *nodeWatch
}

func (np *nodePasswords) verify(ctx context.Context, node, pass string) error {
	s, err := np.client.CoreV1().Secrets(metav1.NamespaceSystem).Get(ctx, secretName(node), metav1.GetOptions{})
	if err != nil {
		return err
	}
	hash, ok := s.Data["hash"]
	if !ok {
		return fmt.Errorf("%w: unable to locate hash data for node secret %s", errVerifyFailed, s.Name)
	}
	if err := verifyHash(string(hash), pass); err != nil {
		return fmt.Errorf("%w: unable to verify password for node %s: %v", errVerifyFailed, node, err)
	}
	return nil
}

// ensure verifies the node's password secret, or creates it (nodepassword.ensure).
func (np *nodePasswords) ensure(ctx context.Context, node, pass string) error {
	err := np.verify(ctx, node, pass)
	if !apierrors.IsNotFound(err) {
		return err
	}
	hash, err := createHash(pass)
	if err != nil {
		return err
	}
	immutable := true
	_, err = np.client.CoreV1().Secrets(metav1.NamespaceSystem).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: secretName(node), Namespace: metav1.NamespaceSystem},
		Immutable:  &immutable,
		Data:       map[string][]byte{"hash": []byte(hash)},
		Type:       secretTypeNodePassword,
	}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return np.verify(ctx, node, pass)
	}
	return err
}

// validate is k3s's NodeAuthValidator (pkg/nodepassword/validate.go): the node name and password
// headers are required (400); a caller authenticated as a node (system:node:<name> in
// system:nodes) must ask for its own name (400) and its Node must still exist (401); the password
// must match the node's secret (403). A failure to create the secret lets the request through
// (k3s defers the check then). Returns the node name.
func (np *nodePasswords) validate(req *http.Request) (string, int, error) {
	u, ok := userFrom(req)
	if !ok {
		return "", http.StatusBadRequest, errors.New("auth user not set")
	}
	name := req.Header.Get("k3s-Node-Name")
	if name == "" {
		return "", http.StatusBadRequest, errors.New("node name not set")
	}
	pass := req.Header.Get("k3s-Node-Password")
	if pass == "" {
		return "", http.StatusBadRequest, errors.New("node password not set")
	}
	name = strings.ToLower(name)
	if nodeName, isNode := nodeIdentity(u); isNode {
		if nodeName != name {
			return "", http.StatusBadRequest, errors.New("header node name does not match auth node name")
		}
		if _, err := np.client.CoreV1().Nodes().Get(req.Context(), nodeName, metav1.GetOptions{}); err != nil {
			return "", http.StatusUnauthorized, fmt.Errorf("unable to verify node identity: %w", err)
		}
	}
	if err := np.ensure(req.Context(), name, pass); err != nil {
		if errors.Is(err, errVerifyFailed) {
			return "", http.StatusForbidden, err
		}
		log.Printf("Password verification deferred for node %s: %v", name, err)
	}
	return name, http.StatusOK, nil
}

// nodeIdentity is k8s.io/kubernetes pkg/auth/nodeidentifier: a user system:node:<name> in the
// group system:nodes.
func nodeIdentity(u *userInfo) (string, bool) {
	name, found := strings.CutPrefix(u.name, "system:node:")
	if !found || name == "" || !anyOf([]string{"system:nodes"}, u.groups) {
		return "", false
	}
	return name, true
}

// ownerRefs gives every node-password secret an owner reference to its Node (the k3s
// node-password controller's onChangeNode), so that the garbage collector deletes the secret
// with the Node.
func (np *nodePasswords) ownerRefs(ctx context.Context) {
	done := map[string]bool{} // Node UIDs whose secret has its owner reference (or has none)
	for ctx.Err() == nil {
		for _, n := range np.nodes.list() {
			if done[string(n.UID)] {
				continue
			}
			s, err := np.client.CoreV1().Secrets(metav1.NamespaceSystem).Get(ctx, secretName(n.Name), metav1.GetOptions{})
			if apierrors.IsNotFound(err) && time.Since(n.CreationTimestamp.Time) > time.Minute {
				done[string(n.UID)] = true // a Node that did not join through the supervisor
			}
			if err != nil {
				continue
			}
			owned := false
			for _, r := range s.OwnerReferences {
				owned = owned || (r.Kind == "Node" && r.Name == n.Name && r.UID == n.UID)
			}
			if owned {
				done[string(n.UID)] = true
				continue
			}
			s = s.DeepCopy()
			s.OwnerReferences = append(s.OwnerReferences, metav1.OwnerReference{APIVersion: "v1", Kind: "Node", Name: n.Name, UID: n.UID})
			if _, err := np.client.CoreV1().Secrets(metav1.NamespaceSystem).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
				log.Printf("Adding node OwnerReference to node-password secret %s: %v", s.Name, err)
			} else {
				log.Printf("Added node OwnerReference to node-password secret %s", s.Name)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
}
