"""`qaie serve`: a local web page to look at models, on the standard library's HTTP server.

`compare` enhances one uploaded photo with each model (through `qaie.api`, as `qaie.enhance`
does) and compares two outputs; `server` is the HTTP server around it and the page
(`qaie/assets/web/index.html`, no network resources). docs/serve.md says why no Gradio.
"""
