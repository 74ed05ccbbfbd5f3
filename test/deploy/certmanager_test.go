package deploy

import (
	"encoding/json"
	"fmt"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// certificate holds the fields of cert-manager.io/v1 Certificate that the
// chart sets, with cert-manager's JSON names. Strict decoding into it catches
// a misspelt or misplaced field; checkCertificate checks the enumerations.
type certificate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		SecretName  string   `json:"secretName"`
		CommonName  string   `json:"commonName,omitempty"`
		Duration    string   `json:"duration,omitempty"`
		RenewBefore string   `json:"renewBefore,omitempty"`
		DNSNames    []string `json:"dnsNames,omitempty"`
		Usages      []string `json:"usages,omitempty"`
		PrivateKey  *struct {
			Algorithm      string `json:"algorithm,omitempty"`
			Size           int    `json:"size,omitempty"`
			RotationPolicy string `json:"rotationPolicy,omitempty"`
		} `json:"privateKey,omitempty"`
		IssuerRef struct {
			Name  string `json:"name"`
			Kind  string `json:"kind,omitempty"`
			Group string `json:"group,omitempty"`
		} `json:"issuerRef"`
	} `json:"spec"`
}

var _ runtime.Object = (*certificate)(nil)

func (c *certificate) DeepCopyObject() runtime.Object {
	b, err := json.Marshal(c)
	if err != nil {
		panic(err)
	}
	var out certificate
	if err := json.Unmarshal(b, &out); err != nil {
		panic(err)
	}
	return &out
}

// cert-manager's KeyUsage values (pkg/apis/certmanager/v1/types.go).
var certManagerUsages = []string{
	"signing", "digital signature", "content commitment", "key encipherment", "key agreement",
	"data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
	"server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
	"ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
}

func checkCertificate(c *certificate) []error {
	var errs []error
	if c.Spec.SecretName == "" {
		errs = append(errs, fmt.Errorf("spec.secretName is empty"))
	}
	if c.Spec.IssuerRef.Name == "" {
		errs = append(errs, fmt.Errorf("spec.issuerRef.name is empty"))
	}
	if k := c.Spec.IssuerRef.Kind; k != "Issuer" && k != "ClusterIssuer" {
		errs = append(errs, fmt.Errorf("spec.issuerRef.kind = %q: must be Issuer or ClusterIssuer", k))
	}
	for _, u := range c.Spec.Usages {
		if !slices.Contains(certManagerUsages, u) {
			errs = append(errs, fmt.Errorf("spec.usages: %q is not a cert-manager key usage", u))
		}
	}
	if pk := c.Spec.PrivateKey; pk != nil {
		if !slices.Contains([]string{"RSA", "ECDSA", "Ed25519"}, pk.Algorithm) {
			errs = append(errs, fmt.Errorf("spec.privateKey.algorithm = %q: must be RSA, ECDSA or Ed25519", pk.Algorithm))
		}
		if !slices.Contains([]string{"", "Never", "Always"}, pk.RotationPolicy) {
			errs = append(errs, fmt.Errorf("spec.privateKey.rotationPolicy = %q: must be Never or Always", pk.RotationPolicy))
		}
	}
	return errs
}
