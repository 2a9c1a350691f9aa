"""PyTorch side of benches/matmul.rs: same shapes, same thread count, one JSON line per shape."""
import json, statistics, sys, time
import torch

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(threads)
for m, k, n in [(512, 2880, 5760), (128, 2880, 5760), (512, 2880, 2880), (512, 512, 1024)]:
    a, b = torch.randn(m, k), torch.randn(k, n)
    ts = []
    for i in range(8):
        t = time.perf_counter(); a @ b; dt = time.perf_counter() - t
        if i >= 2: ts.append(dt)
    rt = None
    if (m, k, n) == (512, 2880, 5760):
        a.requires_grad_(); b.requires_grad_(); rts = []
        for i in range(6):
            t = time.perf_counter(); (a @ b).sum().backward(); a.grad = None; b.grad = None
            if i >= 1: rts.append(time.perf_counter() - t)
        rt = round(statistics.median(rts) * 1e3, 1)
    print(json.dumps({"impl": f"torch-{torch.__version__}", "threads": torch.get_num_threads(), "m": m, "k": k,
                      "n": n, "gflops": round(2 * m * k * n / statistics.median(ts) / 1e9, 1),
                      "autodiff_round_trip_ms": rt}))
