# shellcheck shell=bash
# metrics-server in the test cluster (sourced by k3s/cluster): `kubectl top` against vks nodes.
#
# It runs like the control plane, as a process on loopback (127.0.0.1:$MS_PORT), built from its Go
# module by k3s/build-metrics-server. How the API server reaches it: the APIService points at a
# Service of type ExternalName (`localhost`). The aggregator resolves such a Service to its name
# and the APIService's port (no cluster IP, no Endpoints), so no loopback address has to appear in
# an Endpoints/EndpointSlice object (the API server refuses those) and no --enable-aggregator-routing
# is needed. TLS is verified: serving certificate from server-ca for
# metrics-server.kube-system.svc (the name the aggregator checks), caBundle = server-ca.
# metrics-server calls the API server as system:metrics-server (client certificate from client-ca)
# and the kubelets with the same certificate (the vks kubelet API authorizes it with a
# SubjectAccessReview on nodes/metrics); it verifies the kubelets' serving certificates with
# server-ca. RBAC: the objects of metrics-server's own manifests, bound to that user.
#
# Uses from k3s/cluster: STATE, PKI, APISERVER_PORT, log, die, kubectl with $KUBECONFIG_ADMIN.

MS_PORT=4443
MS_KUBECONFIG=$STATE/metrics-server.kubeconfig

# ms_pki: the serving and client certificates and the kubeconfig (idempotent).
ms_pki() {
  if [ ! -f "$PKI/metrics-server.crt" ]; then
    vks__leaf "$PKI" server-ca "$PKI/metrics-server.crt" "$PKI/metrics-server.key" "/CN=metrics-server" server \
      "DNS:metrics-server.kube-system.svc,DNS:localhost,IP:127.0.0.1" || die "creating the metrics-server certificate"
  fi
  if [ ! -f "$PKI/metrics-server-client.crt" ]; then
    vks__leaf "$PKI" client-ca "$PKI/metrics-server-client.crt" "$PKI/metrics-server-client.key" \
      "/CN=system:metrics-server" client || die "creating the metrics-server client certificate"
  fi
  [ -f "$MS_KUBECONFIG" ] || vks_kubeconfig "$MS_KUBECONFIG" system:metrics-server \
    "$PKI/metrics-server-client.crt" "$PKI/metrics-server-client.key"
}

# shellcheck disable=SC2034  # ARGS is read by k3s/cluster (ensure)
args_metrics-server() {
  ARGS=(--bind-address=127.0.0.1 --secure-port="$MS_PORT"
    --tls-cert-file="$PKI/metrics-server.crt" --tls-private-key-file="$PKI/metrics-server.key"
    --kubeconfig="$MS_KUBECONFIG"
    --authentication-kubeconfig="$MS_KUBECONFIG" --authorization-kubeconfig="$MS_KUBECONFIG"
    --kubelet-certificate-authority="$PKI/server-ca.crt"
    --kubelet-preferred-address-types=InternalIP
    --kubelet-use-node-status-port
    --kubelet-request-timeout=5s
    --metric-resolution=15s
    --profiling=false)
}

check_metrics-server() {
  [ "$(curl -sS --max-time 3 --cacert "$PKI/server-ca.crt" "https://127.0.0.1:$MS_PORT/livez" 2>/dev/null)" = ok ]
}

check_metrics_api() {
  [ "$(kubectl --kubeconfig "$KUBECONFIG_ADMIN" --request-timeout=5s get apiservice v1beta1.metrics.k8s.io \
    -o jsonpath='{.status.conditions[?(@.type=="Available")].status}' 2>/dev/null)" = True ]
}

apply_metrics_server_objects() {
  kubectl --kubeconfig "$KUBECONFIG_ADMIN" apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:aggregated-metrics-reader
  labels:
    rbac.authorization.k8s.io/aggregate-to-admin: "true"
    rbac.authorization.k8s.io/aggregate-to-edit: "true"
    rbac.authorization.k8s.io/aggregate-to-view: "true"
rules:
- {apiGroups: [metrics.k8s.io], resources: [pods, nodes], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:metrics-server
rules:
- {apiGroups: [""], resources: [nodes/metrics], verbs: [get]}
- {apiGroups: [""], resources: [pods, nodes], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:metrics-server
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:metrics-server}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: system:metrics-server}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: metrics-server:system:auth-delegator
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:auth-delegator}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: system:metrics-server}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: metrics-server-auth-reader
  namespace: kube-system
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: extension-apiserver-authentication-reader}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: system:metrics-server}
---
apiVersion: v1
kind: Service
metadata:
  name: metrics-server
  namespace: kube-system
spec:
  type: ExternalName
  externalName: localhost
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1beta1.metrics.k8s.io
spec:
  group: metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  service: {name: metrics-server, namespace: kube-system, port: $MS_PORT}
  caBundle: $(base64 -w0 <"$PKI/server-ca.crt")
EOF
}
