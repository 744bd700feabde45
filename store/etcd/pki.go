package etcd

import "crypto/tls"

// PKI names the certificate files an embedded member generates (see
// package store/etcd/embedded) so that only holders of its client
// certificate can talk to it. All files are 0600 in a 0700 directory: the
// client key is the store's only credential.
type PKI struct {
	// Dir holds the files.
	Dir string
	// CAFile is the CA certificate that signed both leaves: etcdctl's
	// --cacert, our --etcd-ca.
	CAFile string
	// ServerCertFile and ServerKeyFile are the member's certificate.
	ServerCertFile, ServerKeyFile string
	// ClientCertFile and ClientKeyFile are the certificate our own
	// processes (and etcdctl's --cert/--key, our --etcd-cert/--etcd-key)
	// present.
	ClientCertFile, ClientKeyFile string
}

// ClientTLS is the mutual-TLS configuration our clients dial the member with.
func (p PKI) ClientTLS() (*tls.Config, error) {
	return TLSConfig(p.CAFile, p.ClientCertFile, p.ClientKeyFile)
}
