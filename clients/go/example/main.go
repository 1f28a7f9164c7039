// Command example sends one button template through igbutton and prints the
// postbacks that come back, until interrupted.
//
//	go run ./example -addr localhost:50051 -to 1254477777772919
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"

	"github.com/igbutton/igbutton/clients/go/igbutton"
	"github.com/igbutton/igbutton/clients/go/igbuttonv1"
)

func main() {
	addr := flag.String("addr", "localhost:50051", "igbutton's gRPC address")
	to := flag.String("to", "1254477777772919", "recipient IGSID")
	account := flag.String("account", "", "sending IG account (empty: the only configured one)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	client, err := igbutton.Dial(*addr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	stream, err := client.Postbacks.SubscribePostbacks(ctx, &igbuttonv1.SubscribePostbacksRequest{
		PayloadPrefix: "ANSWER_",
	})
	if err != nil {
		log.Fatal(err)
	}

	resp, err := client.Send.SendButtonTemplate(ctx, &igbuttonv1.SendButtonTemplateRequest{
		AccountId:   *account,
		RecipientId: *to,
		RequestId:   igbutton.NewRequestID(),
		Template: igbutton.Template("Did your parcel arrive?",
			igbutton.PostbackButton("Yes", "ANSWER_YES"),
			igbutton.PostbackButton("No", "ANSWER_NO"),
			igbutton.UrlButton("Track it", "https://example.com/track")),
	})
	if err != nil {
		if d, ok := igbutton.Details(err); ok {
			log.Fatalf("send failed: %v", d)
		}
		log.Fatal(err)
	}
	fmt.Printf("sent %s; tap a button (igbutton tap %s) or press Ctrl-C\n", resp.GetMessageId(), resp.GetMessageId())

	for {
		event, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Fatal(err)
		}
		p := event.GetPostback()
		fmt.Printf("#%d %s tapped %q -> %s\n", p.GetSequence(), p.GetSenderId(), p.GetTitle(), p.GetPayload())
	}
}
