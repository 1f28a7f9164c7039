package com.igbutton.client;

import com.igbutton.v1.Button;
import com.igbutton.v1.ButtonTemplate;
import com.igbutton.v1.PostbackAction;
import com.igbutton.v1.UrlAction;
import java.util.List;
import java.util.UUID;

/** Builders for button templates that read like the domain. */
public final class Buttons {
  private Buttons() {}

  /**
   * A button that opens {@code url} in Instagram's in-app browser. Limits (checked by igbutton):
   * title 1-20 characters; url absolute http(s), at most 2048 characters.
   */
  public static Button urlButton(String title, String url) {
    return Button.newBuilder().setTitle(title).setUrl(UrlAction.newBuilder().setUrl(url)).build();
  }

  /**
   * A button whose tap comes back as a postback carrying {@code payload} (1-1000 characters) on
   * PostbackService.SubscribePostbacks.
   */
  public static Button postbackButton(String title, String payload) {
    return Button.newBuilder()
        .setTitle(title)
        .setPostback(PostbackAction.newBuilder().setPayload(payload))
        .build();
  }

  /** A button template: {@code text} (1-640 characters) above one to three buttons. */
  public static ButtonTemplate template(String text, Button... buttons) {
    return ButtonTemplate.newBuilder().setText(text).addAllButtons(List.of(buttons)).build();
  }

  /**
   * A fresh request_id (a random UUID). A send that carries one is idempotent (AIP-155), so it may
   * be retried after UNAVAILABLE without sending twice.
   */
  public static String newRequestId() {
    return UUID.randomUUID().toString();
  }
}
