"""llama.cpp's OpenAI-compatible HTTP server (xllamacpp) over the image's GGUF model, for the e2e tests.

Serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models and /health on 0.0.0.0:$PORT (8080).
Env: MODEL_ALIAS (the model id replies carry; default gemma-3-270m), API_KEY (then every call needs
`Authorization: Bearer <key>`), THREADS (default 1: the dev node has two cores).
"""

import os
import time

import xllamacpp

started = time.monotonic()
params = xllamacpp.CommonParams()
params.model.path = "/opt/llm/model.gguf"
# A set: a plain string would become the set of its letters.
params.model_alias = {os.environ.get("MODEL_ALIAS", "gemma-3-270m")}
params.n_ctx = 2048
params.n_parallel = 1
params.cpuparams.n_threads = params.cpuparams_batch.n_threads = int(os.environ.get("THREADS", "1"))
params.embedding = True
params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
if os.environ.get("API_KEY"):
    params.api_keys = [os.environ["API_KEY"]]
# The GGUF carries no chat template (llama.cpp would fall back to ChatML): Gemma's own turns.
params.chat_template = (
    "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
params.hostnames = ["0.0.0.0"]
params.port = int(os.environ.get("PORT", "8080"))
server = xllamacpp.Server(params)  # serves on its own threads
print("listening", server.listening_address, f"after {time.monotonic() - started:.2f} s", flush=True)
while True:
    time.sleep(3600)
