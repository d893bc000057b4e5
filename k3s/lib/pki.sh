# shellcheck shell=bash
# PKI helpers for the vks test control plane. Source this file; it does not change shell options.
#
#   vks_pki_init [PKIDIR]                 create the cluster PKI (idempotent; used by k3s/cluster up)
#   vks_node_credentials NAME IP OUTDIR   node client kubeconfig + kubelet serving cert (see contract)
#   vks_bootstrap_token [TTL]             create a bootstrap token Secret, print "<id>.<secret>"
#   vks_kubeconfig OUT USER CERT KEY      write a self-contained kubeconfig (embedded *-data)
#
# Environment: VKS_TEST_ROOT (default /var/tmp/vks-test); the PKI lives in $VKS_TEST_ROOT/cluster/pki
# unless VKS_PKI_DIR is set. Keys are ECDSA P-256 (PKCS#8 PEM), like k3s.

VKS_APISERVER_URL=${VKS_APISERVER_URL:-https://127.0.0.1:6443}

vks__pki_dir() { echo "${VKS_PKI_DIR:-${VKS_TEST_ROOT:-/var/tmp/vks-test}/cluster/pki}"; }

vks__need_openssl() {
  command -v openssl >/dev/null && return 0
  echo "pki.sh: installing openssl with apt-get" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y openssl >&2 ||
    { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y openssl >&2; }
}

# vks__key FILE
vks__key() {
  (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null)
}

# vks__ca DIR NAME CN  -> DIR/NAME.crt, DIR/NAME.key (self-signed, 10 years)
vks__ca() {
  local dir=$1 name=$2 cn=$3
  vks__key "$dir/$name.key" || return 1
  openssl req -x509 -new -sha256 -key "$dir/$name.key" -subj "/CN=$cn" -days 3650 \
    -set_serial "0x$(openssl rand -hex 16)" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$dir/$name.crt" 2>/dev/null
}

# vks__leaf CADIR CANAME OUTCRT OUTKEY SUBJECT USAGE [SANS]
#   USAGE: client | server | both;  SANS: e.g. "DNS:x,IP:127.0.0.1"
vks__leaf() {
  local cadir=$1 ca=$2 crt=$3 key=$4 subj=$5 usage=$6 sans=${7:-} eku ext csr
  case $usage in
    client) eku=clientAuth ;;
    server) eku=serverAuth ;;
    both) eku=serverAuth,clientAuth ;;
    *) echo "vks__leaf: bad usage $usage" >&2; return 1 ;;
  esac
  ext=$(mktemp) csr=$(mktemp)
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    echo "authorityKeyIdentifier=keyid"
    if [ -n "$sans" ]; then echo "subjectAltName=$sans"; fi
  } >"$ext"
  vks__key "$key" &&
    openssl req -new -sha256 -key "$key" -subj "$subj" -out "$csr" 2>/dev/null &&
    openssl x509 -req -sha256 -in "$csr" -CA "$cadir/$ca.crt" -CAkey "$cadir/$ca.key" \
      -set_serial "0x$(openssl rand -hex 16)" -days 3650 -extfile "$ext" -out "$crt" 2>/dev/null
  local rc=$?
  rm -f "$ext" "$csr"
  [ $rc = 0 ] || echo "pki.sh: failed to create $crt ($subj)" >&2
  return $rc
}

# vks_kubeconfig OUT USER CERT KEY [CA] [SERVER]  — self-contained kubeconfig, written atomically
vks_kubeconfig() {
  local out=$1 user=$2 cert=$3 key=$4 ca=${5:-$(vks__pki_dir)/server-ca.crt} server=${6:-$VKS_APISERVER_URL}
  local tmp
  tmp=$(mktemp "$out.XXXXXX") || return 1
  chmod 600 "$tmp"
  cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: vks-test
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$ca")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$cert")
    client-key-data: $(base64 -w0 <"$key")
contexts:
- name: vks-test
  context:
    cluster: vks-test
    user: $user
current-context: vks-test
EOF
  mv -f "$tmp" "$out"
}

# vks_pki_init [PKIDIR] — create every cluster certificate. Idempotent: an existing complete PKI is
# kept; it is generated in a temporary directory and renamed into place, so it is never half-made.
vks_pki_init() {
  local dir=${1:-$(vks__pki_dir)} t
  [ -f "$dir/.complete" ] && return 0
  vks__need_openssl || return 1
  mkdir -p "$(dirname "$dir")"
  t=$(mktemp -d "$dir.tmp.XXXXXX") || return 1
  (
    set -e
    vks__ca "$t" server-ca vks-server-ca
    vks__ca "$t" client-ca vks-client-ca
    vks__ca "$t" request-header-ca vks-request-header-ca
    vks__key "$t/service-account.key"
    openssl pkey -in "$t/service-account.key" -pubout -out "$t/service-account.pub" 2>/dev/null
    vks__leaf "$t" server-ca "$t/apiserver.crt" "$t/apiserver.key" "/CN=kube-apiserver" server \
      "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.43.0.1"
    vks__leaf "$t" client-ca "$t/apiserver-kubelet-client.crt" "$t/apiserver-kubelet-client.key" \
      "/O=system:masters/CN=kube-apiserver-kubelet-client" client
    vks__leaf "$t" request-header-ca "$t/front-proxy-client.crt" "$t/front-proxy-client.key" \
      "/CN=system:auth-proxy" client
    vks__leaf "$t" client-ca "$t/admin.crt" "$t/admin.key" "/O=system:masters/CN=system:admin" client
    vks__leaf "$t" client-ca "$t/controller-manager.crt" "$t/controller-manager.key" \
      "/CN=system:kube-controller-manager" client
    vks__leaf "$t" client-ca "$t/scheduler.crt" "$t/scheduler.key" "/CN=system:kube-scheduler" client
    vks__leaf "$t" server-ca "$t/controller-manager-serving.crt" "$t/controller-manager-serving.key" \
      "/CN=kube-controller-manager" server "DNS:localhost,IP:127.0.0.1"
    vks__leaf "$t" server-ca "$t/scheduler-serving.crt" "$t/scheduler-serving.key" \
      "/CN=kube-scheduler" server "DNS:localhost,IP:127.0.0.1"
    touch "$t/.complete"
  ) || { rm -rf "$t"; echo "pki.sh: PKI creation failed" >&2; return 1; }
  chmod 700 "$t"
  rm -rf "$dir"   # only reached without .complete: a leftover from an interrupted run
  mv "$t" "$dir"
}

# vks_node_credentials NAME IP OUTDIR
#   OUTDIR/kubeconfig    user system:node:NAME (O=system:nodes), signed by client-ca, CA server-ca
#   OUTDIR/kubelet.crt   kubelet serving cert, server-ca, CN=NAME, SANs DNS:NAME,DNS:localhost,IP:IP,IP:127.0.0.1
#   OUTDIR/kubelet.key
#   OUTDIR/client-ca.crt the cluster client CA
vks_node_credentials() {
  if [ $# -ne 3 ]; then echo "usage: vks_node_credentials NAME IP OUTDIR" >&2; return 2; fi
  local name=$1 ip=$2 out=$3 pki t sans rc
  pki=$(vks__pki_dir)
  [ -f "$pki/.complete" ] || { echo "pki.sh: no cluster PKI in $pki (run k3s/cluster up first)" >&2; return 1; }
  vks__need_openssl || return 1
  mkdir -p "$out" || return 1
  t=$(mktemp -d "$out/.tmp.XXXXXX") || return 1
  sans="DNS:$name,DNS:localhost,IP:$ip"
  [ "$ip" = 127.0.0.1 ] || sans="$sans,IP:127.0.0.1"
  vks__leaf "$pki" client-ca "$t/client.crt" "$t/client.key" "/O=system:nodes/CN=system:node:$name" client &&
    vks__leaf "$pki" server-ca "$t/kubelet.crt" "$t/kubelet.key" "/CN=$name" server "$sans" &&
    vks_kubeconfig "$t/kubeconfig" "system:node:$name" "$t/client.crt" "$t/client.key" "$pki/server-ca.crt" &&
    cp "$pki/client-ca.crt" "$t/client-ca.crt" &&
    chmod 600 "$t/kubelet.key" && chmod 644 "$t/kubelet.crt" "$t/client-ca.crt" &&
    mv -f "$t/kubeconfig" "$t/kubelet.crt" "$t/kubelet.key" "$t/client-ca.crt" "$out/"
  rc=$?
  rm -rf "$t"
  return $rc
}

# vks_bootstrap_token [TTL]  — create kube-system/bootstrap-token-<id> (type bootstrap.kubernetes.io/token,
# usage-bootstrap-authentication/signing, auth-extra-groups system:bootstrappers:vks) and print
# "<id>.<secret>". TTL is a `date -d` offset, default "24 hours". Uses the admin kubeconfig
# ($VKS_KUBECONFIG or $VKS_TEST_ROOT/cluster/admin.kubeconfig).
vks_bootstrap_token() {
  local ttl=${1:-24 hours} kc rnd="" id secret exp
  kc=${VKS_KUBECONFIG:-${VKS_TEST_ROOT:-/var/tmp/vks-test}/cluster/admin.kubeconfig}
  [ -f "$kc" ] || { echo "pki.sh: no admin kubeconfig at $kc" >&2; return 1; }
  while [ ${#rnd} -lt 22 ]; do
    rnd+=$(LC_ALL=C tr -dc 'a-z0-9' < <(head -c 256 /dev/urandom))
  done
  id=${rnd:0:6} secret=${rnd:6:16}
  exp=$(date -u -d "+$ttl" +%Y-%m-%dT%H:%M:%SZ) || return 1
  kubectl --kubeconfig "$kc" create -f - >/dev/null <<EOF || return 1
apiVersion: v1
kind: Secret
metadata:
  name: bootstrap-token-$id
  namespace: kube-system
type: bootstrap.kubernetes.io/token
stringData:
  description: "vks test bootstrap token"
  token-id: "$id"
  token-secret: "$secret"
  expiration: "$exp"
  usage-bootstrap-authentication: "true"
  usage-bootstrap-signing: "true"
  auth-extra-groups: "system:bootstrappers:vks"
EOF
  echo "$id.$secret"
}
