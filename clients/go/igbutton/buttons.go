package igbutton

import (
	"crypto/rand"
	"fmt"

	"github.com/igbutton/igbutton/clients/go/igbuttonv1"
)

// UrlButton is a button that opens url in Instagram's in-app browser.
// Limits (checked by igbutton): title 1-20 characters; url absolute http(s),
// at most 2048 characters.
func UrlButton(title, url string) *igbuttonv1.Button {
	return &igbuttonv1.Button{
		Title:  title,
		Action: &igbuttonv1.Button_Url{Url: &igbuttonv1.UrlAction{Url: url}},
	}
}

// PostbackButton is a button whose tap comes back as a postback carrying
// payload (1-1000 characters) on PostbackService.SubscribePostbacks.
func PostbackButton(title, payload string) *igbuttonv1.Button {
	return &igbuttonv1.Button{
		Title:  title,
		Action: &igbuttonv1.Button_Postback{Postback: &igbuttonv1.PostbackAction{Payload: payload}},
	}
}

// Template is a button template: text (1-640 characters) above 1-3 buttons.
func Template(text string, buttons ...*igbuttonv1.Button) *igbuttonv1.ButtonTemplate {
	return &igbuttonv1.ButtonTemplate{Text: text, Buttons: buttons}
}

// NewRequestID returns a random UUID (version 4) to use as a send's
// request_id, which makes the send safe to retry (AIP-155): a repeat with
// the same id returns the first result instead of sending twice.
func NewRequestID() string {
	var b [16]byte
	// crypto/rand.Read never returns an error since Go 1.24.
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 9562 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
