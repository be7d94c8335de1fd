"""A fake vLLM server for tests: `/v1/completions` with `prompt_logprobs`, in vLLM's format,
computed by a real model, so a run against it can be compared with an in-process run."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from opd_lab.generation import forward_logits


def fake_vllm(model, tokenizer):
    """An HTTP server answering /v1/completions with vLLM's `prompt_logprobs` shape,
    computed by `model` (each prompt alone, unpadded, as a server would)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert self.path == "/v1/completions" and request["max_tokens"] == 1
            top_k, choices = request["prompt_logprobs"], []
            for index, ids in enumerate(request["prompt"]):
                sequence = torch.tensor([ids])
                with torch.no_grad():
                    logps_SV = torch.log_softmax(forward_logits(model, sequence, torch.ones_like(sequence))[0], -1)
                entries = [None]
                for position in range(1, len(ids)):
                    row_V = logps_SV[position - 1]
                    order = row_V.argsort(descending=True).tolist()
                    wanted = order[:top_k] + [ids[position]]
                    entries.append({str(t): {"logprob": float(row_V[t]), "rank": order.index(t) + 1,
                                             "decoded_token": tokenizer.decode([t])} for t in wanted})
                choices.append({"index": index, "text": "", "logprobs": None, "finish_reason": "length",
                                "stop_reason": None, "prompt_logprobs": entries})
            body = json.dumps({"id": "cmpl-fake", "object": "text_completion", "model": request["model"],
                               "choices": choices[::-1]}).encode()  # out of order on purpose: match by index
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@contextmanager
def serving(model, tokenizer):
    """`fake_vllm` for the length of a `with` block; yields its base URL."""
    server = fake_vllm(model, tokenizer)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
