"""Measure the peak memory of a few training steps of a TransformerLM on the CPU (a script).

``python tests/peak_probe.py '{"vocab": 33278, "d_model": 128, ...}'`` prints one line of JSON:
``{"rss_peak_bytes": ..., "tensor_peak_bytes": ...}``. Keys: the sizes (``vocab``, ``d_model``,
``n_layers``, ``n_heads``, ``context``, ``batch``), ``precision`` (``"fp32"``/``"bf16"``),
``explicit_attention`` (train through ``model(x, return_attention=True)``) and ``steps``.

- ``rss_peak_bytes``: the rise of the process's peak resident set size (``VmHWM``, reset through
  ``/proc/self/clear_refs``) over the resident size before the model was built. glibc's malloc is
  told (``mallopt``) to serve every block over 64 KiB with its own ``mmap``, so that a freed
  tensor goes back to the system at once and the high-water mark is the peak of live memory
  (plus the allocator's and oneDNN's own overheads), not of memory cached for reuse.
- ``tensor_peak_bytes``: the peak of the bytes PyTorch's CPU allocator had handed out, from the
  allocation and free events ``torch.profiler`` records (``utils.attention_cost.peak_memory_bytes``)
  over one further step: what the CUDA caching allocator's ``max_memory_allocated`` would count.

Used by ``tests/test_gpu_estimate.py``; Linux only.
"""

from __future__ import annotations

import ctypes
import json
import re
import sys


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def main(spec: dict) -> dict:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: fixed, so no dynamic raising either
    import torch

    from utils.attention_cost import peak_memory_bytes
    from utils.losses import lm_loss
    from utils.models import TransformerLM
    from utils.train import TrainConfig, Trainer

    class Explicit(
        torch.nn.Module
    ):  # the L x L attention weights materialised in every layer
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, idx):
            return self.lm(idx, return_attention=True)[0]

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    V, T, B = spec["vocab"], spec["context"], spec["batch"]
    data = torch.randint(0, V, (8, B, T + 1), generator=g)

    def batch_at(i):
        w = data[i % 8]
        return w[:, :-1], w[:, 1:]

    libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    before = _status_kib("VmRSS")
    torch.manual_seed(0)
    model = TransformerLM(
        V, spec["d_model"], spec["n_heads"], spec["n_layers"], max_len=T
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    config = TrainConfig(
        max_steps=spec.get("steps", 3),
        precision=spec.get("precision", "fp32"),
        device="cpu",
        progress=False,
        seed=0,
    )
    trained = Explicit(model) if spec.get("explicit_attention") else model
    trainer = Trainer(trained, optimizer, lm_loss, config)
    trainer.fit(batch_at)
    rss_peak = (_status_kib("VmHWM") - before) * 1024

    resident = sum(
        t.numel() * t.element_size()
        for t in [*model.parameters()]
        + [s for state in optimizer.state.values() for s in state.values()]
        if isinstance(t, torch.Tensor)
    )
    trainer.config.max_steps += 1
    tensor_peak = resident + peak_memory_bytes(lambda: trainer.fit(batch_at))
    return {"rss_peak_bytes": rss_peak, "tensor_peak_bytes": tensor_peak}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
