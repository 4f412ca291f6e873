# The local cluster's certificates and kubeconfigs (sourced, never run): made once, kept across `down`.

# issue_cert NAME CN [O] [SANS]: a key and a certificate signed by the cluster CA (kept when present).
issue_cert() {
  local name=$1 cn=$2 org=${3:-} sans=${4:-}
  if [[ -f $PKI/$name.crt ]]; then return 0; fi
  local subj="/CN=$cn" ext=$PKI/$name.ext
  if [[ -n $org ]]; then subj="/O=$org$subj"; fi
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    if [[ -n $sans ]]; then echo "subjectAltName=$sans"; fi
  } >"$ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$ext"
}

# write_kubeconfig NAME USER: a kubeconfig for the API server with NAME's client certificate.
write_kubeconfig() {
  local name=$1 user=$2 file=$CONF/$1.kubeconfig
  if [[ -f $file ]]; then return 0; fi
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: codeexec
  cluster:
    certificate-authority: $PKI/ca.crt
    server: https://127.0.0.1:6443
users:
- name: $user
  user:
    client-certificate: $PKI/$name.crt
    client-key: $PKI/$name.key
contexts:
- name: codeexec
  context: {cluster: codeexec, user: $user}
current-context: codeexec
EOF
}

make_pki() {
  mkdir -p "$PKI" "$CONF"
  if [[ ! -f $PKI/ca.crt ]]; then
    openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=codeexec-ca" -days 3650 -out "$PKI/ca.crt" 2>/dev/null
  fi
  local ip c
  ip=$(node_ip)
  issue_cert apiserver kube-apiserver "" \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$API_SERVICE_IP,IP:$ip"
  issue_cert admin kubernetes-admin system:masters
  issue_cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  issue_cert controller-manager system:kube-controller-manager
  issue_cert scheduler system:kube-scheduler
  issue_cert kubelet "system:node:$NODE_NAME" system:nodes "DNS:$NODE_NAME,DNS:localhost,IP:127.0.0.1,IP:$ip"
  issue_cert kube-proxy system:kube-proxy
  issue_cert kube-router kube-router
  if [[ ! -f $PKI/sa.key ]]; then
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  for c in admin controller-manager scheduler kubelet kube-proxy kube-router; do write_kubeconfig "$c" "$c"; done
  cp "$CONF/admin.kubeconfig" "$KUBECONFIG_ADMIN"
}
