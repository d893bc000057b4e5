package main

import (
	"context"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"net/http"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
)

// userInfo is the authenticated caller (k8s.io/apiserver's user.Info).
type userInfo struct {
	name   string
	groups []string
}

type basicUser struct {
	password string
	groups   []string
}

// authenticator reproduces the union authenticator k3s gives its supervisor
// (pkg/authenticator.FromArgs combined with the API server's authenticator in
// pkg/daemons/control/server.go): basic auth against the passwd users, then client certificates
// from the client CA (CN = user, O = groups), then bearer tokens as the API server authenticates
// them (here: a TokenReview to the real API server, so bootstrap tokens behave exactly as there).
// The first success wins; when all fail, their errors are the answer; "system:authenticated" is
// added to every user.
type authenticator struct {
	users     map[string]basicUser
	clientCAs *x509.CertPool
	client    kubernetes.Interface
}

var (
	errInvalidAuth  = errors.New("invalid username/password combination")
	errInvalidToken = errors.New("invalid bearer token")
)

func (a *authenticator) authenticate(req *http.Request) (*userInfo, bool, error) {
	var errs []error
	for _, f := range []func(*http.Request) (*userInfo, bool, error){a.basic, a.x509, a.bearer} {
		u, ok, err := f(req)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ok {
			u.groups = append(u.groups, "system:authenticated")
			return u, true, nil
		}
	}
	return nil, false, errors.Join(errs...)
}

// basic: k3s's basicauth.Authenticator over its passwd file (users "node" and "server").
func (a *authenticator) basic(req *http.Request) (*userInfo, bool, error) {
	name, password, found := req.BasicAuth()
	if !found {
		return nil, false, nil
	}
	u, ok := a.users[name]
	if !ok || subtle.ConstantTimeCompare([]byte(u.password), []byte(password)) != 1 {
		return nil, false, errInvalidAuth
	}
	return &userInfo{name: name, groups: append([]string(nil), u.groups...)}, true, nil
}

// x509: k8s.io/apiserver's x509 authenticator with CommonNameUserConversion.
func (a *authenticator) x509(req *http.Request) (*userInfo, bool, error) {
	if req.TLS == nil || len(req.TLS.PeerCertificates) == 0 {
		return nil, false, nil
	}
	certs := req.TLS.PeerCertificates
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	opts := x509.VerifyOptions{Roots: a.clientCAs, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if _, err := certs[0].Verify(opts); err != nil {
		return nil, false, fmt.Errorf("verifying certificate %s failed: %w", certs[0].Subject, err)
	}
	if certs[0].Subject.CommonName == "" {
		return nil, false, errors.New("common name of user name in the certificate is empty")
	}
	return &userInfo{name: certs[0].Subject.CommonName, groups: append([]string(nil), certs[0].Subject.Organization...)}, true, nil
}

// bearer: k8s.io/apiserver's bearertoken authenticator in front of the API server's token
// authenticators, asked through the TokenReview API.
func (a *authenticator) bearer(req *http.Request) (*userInfo, bool, error) {
	auth := strings.TrimSpace(req.Header.Get("Authorization"))
	parts := strings.SplitN(auth, " ", 3)
	if len(parts) < 2 || strings.ToLower(parts[0]) != "bearer" || parts[1] == "" {
		return nil, false, nil
	}
	review := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: parts[1]}}
	got, err := a.client.AuthenticationV1().TokenReviews().Create(req.Context(), review, metav1.CreateOptions{})
	if err != nil {
		return nil, false, fmt.Errorf("token review: %w", err)
	}
	if !got.Status.Authenticated {
		return nil, false, errInvalidToken
	}
	return &userInfo{name: got.Status.User.Username, groups: got.Status.User.Groups}, true, nil
}

type userKey struct{}

func withUser(req *http.Request, u *userInfo) *http.Request {
	return req.WithContext(context.WithValue(req.Context(), userKey{}, u))
}

func userFrom(req *http.Request) (*userInfo, bool) {
	u, ok := req.Context().Value(userKey{}).(*userInfo)
	return u, ok
}

// hasRole is k3s's auth.HasRole middleware: 401 when authentication fails, 403 when the user has
// none of the roles (groups).
func (a *authenticator) hasRole(next http.Handler, roles ...string) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, req *http.Request) {
		u, ok, err := a.authenticate(req)
		if err != nil {
			log.Printf("Failed to authenticate request from %s: %v", req.RemoteAddr, err)
			sendError(errors.New("not authorized"), rw, req, http.StatusUnauthorized)
			return
		}
		if !ok || !anyOf(roles, u.groups) {
			sendError(errors.New("forbidden"), rw, req, http.StatusForbidden)
			return
		}
		next.ServeHTTP(rw, withUser(req, u))
	})
}

func anyOf(want, have []string) bool {
	for _, h := range have {
		for _, w := range want {
			if h == w {
				return true
			}
		}
	}
	return false
}

// sendError is k3s's util.SendError: a Kubernetes Status object with the code.
func sendError(err error, rw http.ResponseWriter, req *http.Request, code int) {
	log.Printf("Sending %s %d response to %s: %v", req.Proto, code, req.RemoteAddr, err)
	var serr *apierrors.StatusError
	switch code {
	case http.StatusBadRequest:
		serr = apierrors.NewBadRequest(err.Error())
	case http.StatusUnauthorized:
		serr = apierrors.NewUnauthorized(err.Error())
	case http.StatusForbidden:
		serr = apierrors.NewForbidden(schema.GroupResource{}, "", err)
	case http.StatusServiceUnavailable:
		serr = apierrors.NewServiceUnavailable(err.Error())
	case http.StatusBadGateway:
		serr = apierrors.NewGenericServerResponse(code, req.Method, schema.GroupResource{}, "", err.Error(), 0, true)
	default:
		serr = apierrors.NewInternalError(err)
	}
	status := serr.ErrStatus
	status.Kind, status.APIVersion = "Status", "v1"
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(code)
	_ = writeJSON(rw, status)
}
