/**
 * A small layer over the generated igbutton stubs ({@code com.igbutton.v1}): {@link
 * com.igbutton.client.IgbuttonClient} owns the channel, {@link com.igbutton.client.Buttons} builds
 * templates that read like the domain, and {@link com.igbutton.client.ErrorDetails} decodes
 * igbutton's AIP-193 error details.
 */
package com.igbutton.client;
