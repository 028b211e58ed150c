"""The explorer: a static page each node serves at ``/explorer/`` (docs/explorer.md).

The page (``index.html``, ``app.js``, ``verify.js``, ``style.css``) ships in this package
and runs in the browser with no build step; ``verify.js`` checks inclusion proofs there,
independently of the Python code. ``flows`` aggregates the chain for its chart.
"""
