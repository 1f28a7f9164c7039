// Package igbutton is a small, idiomatic layer over the generated igbutton.v1
// gRPC stubs (package igbuttonv1): Dial with options, button builders that read
// like the domain, and a helper that decodes igbutton's AIP-193 error details.
//
// As the Python client does, a client from Dial retries UNAVAILABLE on the
// calls that are safe to repeat (ServiceConfig) and gives every send without a
// request_id a fresh one, so a retried send goes out once; Client.Subscribe
// returns a postback stream that resumes with after_sequence after a restart.
//
// The generated clients stay fully available (Client.Send, Client.Postbacks),
// so anything the contract offers can be called directly:
//
//	client, err := igbutton.Dial("localhost:50051")
//	if err != nil { ... }
//	defer client.Close()
//	resp, err := client.Send.SendButtonTemplate(ctx, &igbuttonv1.SendButtonTemplateRequest{
//		RecipientId: "1254477777772919",
//		RequestId:   igbutton.NewRequestID(),
//		Template: igbutton.Template("Did it arrive?",
//			igbutton.PostbackButton("Yes", "ANSWER_YES"),
//			igbutton.UrlButton("Track", "https://example.com/track")),
//	})
//	if d, ok := igbutton.Details(err); ok && d.Reason == "RATE_LIMITED" {
//		time.Sleep(d.RetryDelay)
//	}
package igbutton
