"""Print the anchor_unlearn diagnostic table from the runs' JSON lines (one per diag.py run).

    python benchmarks/experiments/anchor-unlearn/table.py benchmarks/experiments/anchor-unlearn/runs.jsonl
"""
import json
import sys

BASE = {"lr": 3e-5, "epochs": 3, "insert_prob": 0.5, "probe_share": 0.5, "insert_label_weight": 0.0,
        "label_weight": 1.0, "anchor_weight": 1.0, "latent_weight": 1.0, "latent_radius": 0.5}


def main(path: str) -> None:
    print("| run | options (beyond the strategy's defaults at the time) | epoch | test ASR | trigger lift | "
          "clean target rate | test CACC | val proxy lift | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for line in open(path):
        r = json.loads(line)
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items() if BASE.get(k) != v)
        for h in r["trajectory"]:
            print(f"| {r['name']} | {opts} | {h['epoch']} | {100 * h['test_asr']:.1f} | {100 * h['test_lift']:.1f} | "
                  f"{100 * (h['test_asr'] - h['test_lift']):.1f} | {100 * h['test_cacc']:.1f} | "
                  f"{100 * h['val_proxy_lift']:.1f} | "
                  f"{r['seconds'] if h['epoch'] == len(r['trajectory']) else ''} |")
        if r.get("final") and r.get("bias_calibration") is not None:
            f = r["final"]
            print(f"| {r['name']} | {opts} | after bias calibration | {100 * f['test_asr']:.1f} | "
                  f"{100 * f['test_lift']:.1f} | {100 * (f['test_asr'] - f['test_lift']):.1f} | "
                  f"{100 * f['test_cacc']:.1f} | | |")


if __name__ == "__main__":
    main(sys.argv[1])
