package relay_test

import (
	"bufio"
	"errors"
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/relay"
)

// echo serves one line back per connection on a loopback port.
func echo(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil {
					_, _ = c.Write([]byte("echo " + line))
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// Bytes cross both ways through the relay; a failed dial closes the
// accepted connection.
func TestServe(t *testing.T) {
	target := echo(t)
	tests := []struct {
		name string
		dial func() (net.Conn, error)
		want string // "" : the connection is closed without an answer
	}{
		{"joined", func() (net.Conn, error) { return net.Dial("tcp", target) }, "echo hello\n"},
		{"dial fails", func() (net.Conn, error) { return nil, errors.New("no route") }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			relay.Serve(t, ln, tt.dial)
			c, err := net.Dial("tcp", ln.Addr().String())
			require.NoError(t, err)
			defer c.Close()
			_, err = c.Write([]byte("hello\n"))
			require.NoError(t, err)
			got, err := bufio.NewReader(c).ReadString('\n')
			if tt.want == "" {
				assert.Error(t, err, "the relay closes the connection")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}
