"""The web console: compose and preview a template, watch a sandbox conversation and the
live postbacks, in a browser, served by igbutton itself at ``/console`` on the operations
port (enable with ``console.enabled``; on by default in sandbox mode only).

Why server-rendered HTML and a little plain JavaScript, not a single-page app:

- **Nothing to build.** Jinja2 templates (autoescaped) and two small scripts under
  ``static/`` ship in the Python package as they are; no Node toolchain at run time or at
  install, no bundle to keep in step with its sources, nothing for CI to rebuild.
- **The rules stay on the server.** The preview asks the server on every change, which
  runs ``ValidateButtonTemplate``'s own code: nothing of ``send/validation.py`` is
  copied into JavaScript, so the console can never disagree with the API.
- **A strict CSP is easy to keep.** No inline script or style at all, so the policy is
  ``script-src 'self'`` without nonces; every value from a template or a postback
  reaches the page through autoescaping or ``textContent``.
- **The live feed needs only EventSource** (server-sent events), which reconnects and
  resumes by itself, over the same HTTP port and cookie as the pages.

Pages live in :mod:`igbutton_server.console.pages`, one module each.
"""

from igbutton_server.console.site import PREFIX, build_console_app, console_url

__all__ = ["PREFIX", "build_console_app", "console_url"]
