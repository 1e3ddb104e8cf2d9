"""export.py's files against the checkpoint they came from: the largest absolute difference of the
log-probabilities (and of the state, for the streaming entries) from the model's own, on export.py's
own sample batches (export.SAMPLE_SHAPES: 7 steps then 1 step, batch 3; the tracing example is 5 x 2).
export.py refuses a file above export.CHECK_TOLERANCE; this prints the figures it checked.

    python export.py --checkpoint M.pt --torchscript M.ts --onnx M.onnx --onnx-stream M.stream.onnx
    python benchmarks/export_check.py M.pt M.ts M.onnx M.stream.onnx
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import export  # noqa: E402
from harness import checkpoint  # noqa: E402


def main(save, torchscript, onnx, onnx_stream):
    ckpt = checkpoint.load_checkpoint(save, map_location='cpu', resume_state_ok=False)
    chunks = export.sample_chunks(len(ckpt['idx2word']))
    expected = export.own_computation(ckpt['model'], ckpt['criterion'], chunks)
    start = export.zero_state_like(expected)
    files = [('TorchScript', export.torchscript_results(torchscript, chunks, start)),
             ('ONNX', export.onnx_results(onnx, chunks, start, streaming=False)),
             ('ONNX', export.onnx_results(onnx_stream, chunks, start, streaming=True))]
    for name, results in files:
        for (entry, what), difference in export.differences(results, expected).items():
            shown = difference if isinstance(difference, str) else f'{difference:.2e}'
            print(f'{name} {entry}, {what}: {shown}')


if __name__ == '__main__':
    main(*sys.argv[1:5])
