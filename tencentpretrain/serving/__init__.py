"""The HTTP API (an OpenAI-style completions and chat server over the continuous batcher; needs the ``.[serve]``
extra): ``app.py``'s ``Service`` and ``create_app``, run by ``inference/server.py``."""
