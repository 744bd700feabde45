package machine

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/lpmos/lpmos"
)

// KeySize is the size of a sealing key: AES-256.
const KeySize = 32

// ErrNoKey: a BMC password was given or needed but no sealing key is
// configured.
var ErrNoKey = errors.New("machine: no BMC key configured: BMC passwords cannot be sealed or unsealed")

// ErrUnseal: a sealed password could not be opened: the key is not the one
// it was sealed with, or the ciphertext was altered or moved to another
// machine.
var ErrUnseal = errors.New("machine: cannot unseal BMC password: wrong key, or altered or moved ciphertext")

// sealedPrefix versions the sealed form: "v1:" + the key's ID + ":" +
// base64(nonce || ciphertext).
const sealedPrefix = "v1:"

// Sealer seals BMC passwords with AES-256-GCM. The additional data binds a
// sealed password to its machine's MAC, so that ciphertext copied from one
// record to another does not open. A nil *Sealer seals nothing: every
// call returns ErrNoKey.
type Sealer struct {
	aead cipher.AEAD
	id   string
}

// NewSealer returns a Sealer for a KeySize-byte key.
func NewSealer(key []byte) (*Sealer, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("machine: BMC key must be %d bytes, got %d", KeySize, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(key)
	return &Sealer{aead: aead, id: hex.EncodeToString(sum[:4])}, nil
}

// KeyID names the key without revealing it (the first 4 bytes of its
// SHA-256, in hex): a sealed password says which key sealed it, so that a
// wrong key file is told apart from altered ciphertext.
func (s *Sealer) KeyID() string {
	if s == nil {
		return ""
	}
	return s.id
}

// LoadKeyFile reads a sealing key from path: 32 raw bytes, or the same as
// 64 hex digits or standard base64 (surrounding whitespace ignored). The
// file must not be readable by group or others: it opens every BMC
// password in the store.
func LoadKeyFile(path string) (*Sealer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("BMC key file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("BMC key file %s: mode %04o lets others read it; chmod 600 it", path, fi.Mode().Perm())
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("BMC key file: %w", err)
	}
	key, err := decodeKey(raw)
	if err != nil {
		return nil, fmt.Errorf("BMC key file %s: %w", path, err)
	}
	return NewSealer(key)
}

func decodeKey(raw []byte) ([]byte, error) {
	if len(raw) == KeySize {
		return raw, nil
	}
	text := strings.TrimSpace(string(raw))
	if b, err := hex.DecodeString(text); err == nil && len(b) == KeySize {
		return b, nil
	}
	if b, err := base64.StdEncoding.DecodeString(text); err == nil && len(b) == KeySize {
		return b, nil
	}
	return nil, fmt.Errorf("want %d bytes, raw or as hex or base64", KeySize)
}

// EnsureKeyFile returns the Sealer of the key in path, first writing a new
// random key there (hex, mode 0600) if the file does not exist. The
// all-in-one binary uses it so that a fresh data directory can seal
// passwords with nothing set up by hand.
func EnsureKeyFile(path string) (*Sealer, error) {
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case errors.Is(err, fs.ErrExist):
		return LoadKeyFile(path)
	case err != nil:
		return nil, fmt.Errorf("BMC key file: %w", err)
	}
	_, werr := f.WriteString(hex.EncodeToString(key) + "\n")
	if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
		return nil, fmt.Errorf("BMC key file %s: %w", path, err)
	}
	return NewSealer(key)
}

func additionalData(mac lpmos.MAC) []byte { return []byte("lpmos-bmc-password:" + mac.String()) }

// Seal seals a machine's BMC password.
func (s *Sealer) Seal(mac lpmos.MAC, password string) (string, error) {
	if s == nil {
		return "", ErrNoKey
	}
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(password)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	out := s.aead.Seal(nonce, nonce, []byte(password), additionalData(mac))
	return sealedPrefix + s.id + ":" + base64.RawStdEncoding.EncodeToString(out), nil
}

// Open opens what Seal sealed for the same MAC.
func (s *Sealer) Open(mac lpmos.MAC, sealed string) (string, error) {
	if s == nil {
		return "", ErrNoKey
	}
	rest, ok := strings.CutPrefix(sealed, sealedPrefix)
	if !ok {
		return "", fmt.Errorf("%w: unknown format", ErrUnseal)
	}
	id, b64, ok := strings.Cut(rest, ":")
	if !ok {
		return "", fmt.Errorf("%w: unknown format", ErrUnseal)
	}
	if id != s.id {
		return "", fmt.Errorf("%w: sealed under key %s, this key is %s", ErrUnseal, id, s.id)
	}
	raw, err := base64.RawStdEncoding.DecodeString(b64)
	if err != nil || len(raw) < s.aead.NonceSize() {
		return "", fmt.Errorf("%w: malformed ciphertext", ErrUnseal)
	}
	n := s.aead.NonceSize()
	plain, err := s.aead.Open(nil, raw[:n], raw[n:], additionalData(mac))
	if err != nil {
		return "", ErrUnseal
	}
	return string(plain), nil
}
