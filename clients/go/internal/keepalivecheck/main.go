// Command keepalivecheck holds one idle SubscribePostbacks stream open and reports,
// as one JSON line on stdout, whether it survived. tests/clients/test_keepalive.py
// builds and runs it against a real igbutton.
//
// It prints "subscribed" once the server has sent the stream's initial metadata (so a
// test may then stop the process to play a client that vanished without a FIN), then
// waits for -hold. With -ping it pings like a client behind a load balancer
// (keepalive.ClientParameters{Time: -ping, PermitWithoutStream: true}); a server that
// refuses such pings answers with GOAWAY ENHANCE_YOUR_CALM "too_many_pings", which ends
// the stream and makes the report fail.
//
//	go run ./internal/keepalivecheck -addr 127.0.0.1:50051 -ping 10s -hold 65s
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/keepalive"

	"github.com/igbutton/igbutton/clients/go/igbutton"
	"github.com/igbutton/igbutton/clients/go/igbuttonv1"
)

// report is what the program prints when it ends.
type report struct {
	HeldSeconds float64 `json:"held_seconds"`
	// Error is how the stream ended early ("" if it was still open after -hold).
	Error string `json:"error"`
	// States are the connection's states after READY, in order (none when it stayed up).
	States []string `json:"states"`
	// BytesReadIdle counts bytes read from the server while the stream was idle.
	BytesReadIdle int64 `json:"bytes_read_idle"`
}

// countingConn counts the bytes read from the connection.
type countingConn struct {
	net.Conn
	read *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func main() {
	addr := flag.String("addr", "", "igbutton's gRPC address")
	hold := flag.Duration("hold", 65*time.Second, "how long to hold the idle stream")
	ping := flag.Duration("ping", 10*time.Second, "client keepalive ping interval (0: no client pings)")
	flag.Parse()
	if *addr == "" {
		fmt.Fprintln(os.Stderr, "-addr is required")
		os.Exit(2)
	}
	if err := run(*addr, *hold, *ping); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(addr string, hold, ping time.Duration) error {
	var read atomic.Int64
	dialer := func(ctx context.Context, target string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", target)
		if err != nil {
			return nil, err
		}
		return countingConn{Conn: conn, read: &read}, nil
	}
	dialOptions := []grpc.DialOption{grpc.WithContextDialer(dialer)}
	if ping > 0 {
		dialOptions = append(dialOptions, grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time: ping, Timeout: 20 * time.Second, PermitWithoutStream: true,
		}))
	}
	client, err := igbutton.Dial("passthrough:///"+addr, igbutton.WithDialOptions(dialOptions...))
	if err != nil {
		return err
	}
	defer client.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A prefix no postback has: the stream stays idle.
	stream, err := client.Postbacks.SubscribePostbacks(ctx, &igbuttonv1.SubscribePostbacksRequest{
		PayloadPrefix: "keepalivecheck-" + igbutton.NewRequestID(),
	})
	if err != nil {
		return fmt.Errorf("SubscribePostbacks: %w", err)
	}
	headerCtx, headerCancel := context.WithTimeout(ctx, 30*time.Second)
	defer headerCancel()
	headers := make(chan error, 1)
	go func() { _, err := stream.Header(); headers <- err }()
	select {
	case err := <-headers:
		if err != nil {
			return fmt.Errorf("waiting for the stream's initial metadata: %w", err)
		}
	case <-headerCtx.Done():
		return fmt.Errorf("no initial metadata within 30 s")
	}

	conn := client.Conn()
	var mu sync.Mutex
	states := []string{}
	go func() {
		state := conn.GetState()
		for conn.WaitForStateChange(ctx, state) {
			state = conn.GetState()
			mu.Lock()
			states = append(states, state.String())
			mu.Unlock()
			if state == connectivity.Shutdown {
				return
			}
		}
	}()
	ended := make(chan error, 1)
	go func() {
		_, err := stream.Recv()
		ended <- err
	}()

	idleFrom := read.Load()
	started := time.Now()
	fmt.Println("subscribed")
	out := report{States: []string{}}
	select {
	case err := <-ended:
		out.Error = fmt.Sprintf("stream ended after %.1f s: %v", time.Since(started).Seconds(), err)
		if err == nil {
			out.Error = fmt.Sprintf("stream sent a message after %.1f s", time.Since(started).Seconds())
		}
	case <-time.After(hold):
	}
	out.HeldSeconds = time.Since(started).Seconds()
	out.BytesReadIdle = read.Load() - idleFrom
	mu.Lock()
	out.States = append(out.States, states...)
	mu.Unlock()
	line, err := json.Marshal(out)
	if err != nil {
		return err
	}
	fmt.Println(string(line))
	if out.Error != "" || len(out.States) != 0 {
		return fmt.Errorf("the idle stream did not survive: %s", line)
	}
	return nil
}
