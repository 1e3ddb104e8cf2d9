"""export.py's files against the checkpoint they came from: the largest absolute difference of the
log-probabilities on random ids (9 steps, batch 3), for TorchScript, ONNX and ONNX streaming.

    python export.py --checkpoint M.pt --torchscript M.ts --onnx M.onnx --onnx-stream M.stream.onnx
    python benchmarks/export_check.py M.pt M.ts M.onnx M.stream.onnx
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from harness import checkpoint  # noqa: E402

save, ts, onnx, stream = sys.argv[1:5]
ckpt = checkpoint.load_checkpoint(save, map_location='cpu', resume_state_ok=False)
model, criterion = ckpt['model'].eval(), ckpt['criterion']
torch.manual_seed(0)
ids = torch.randint(len(ckpt['idx2word']), (9, 3))
with torch.no_grad():
    output, _ = model(ids, model.init_hidden(3))
    expected = criterion.logprob(model.decoder.weight, model.decoder.bias, output).view(9, 3, -1).numpy()
with torch.no_grad():
    scripted = torch.jit.load(ts)(ids).numpy()
print(f'TorchScript: {np.abs(scripted - expected).max():.2e}')
print(f'ONNX: {np.abs(ort.InferenceSession(onnx).run(None, {"ids": ids.numpy()})[0] - expected).max():.2e}')
session = ort.InferenceSession(stream)
zeros = {i.name: np.zeros((1, 3, i.shape[2]), np.float32) for i in session.get_inputs()[1:]}
print(f'ONNX stream: {np.abs(session.run(None, {"ids": ids.numpy(), **zeros})[0] - expected).max():.2e}')
