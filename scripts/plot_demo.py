"""Plot the miniature's learning curves from a `scripts/train_demo.sh` work folder (needs matplotlib).

    python scripts/plot_demo.py WORK [--out docs/miniature.png]

Left: pre-training's masked-patch loss (training clips, from metrics.jsonl) and `vmae probe` top-1 of the
encoder saved every few hundred steps (WORK/probe/step-N.json; 8 labelled clips per class -> held-out clips).
Right: fine-tuned top-1 on the held-out clips against labelled clips per class, after pre-training and from
scratch (WORK/{pretrained,scratch}-N.eval.json). matplotlib is a plotting tool here, not a vmae dependency:
`pip install matplotlib` where you run this.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/miniature.png"))
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    work = args.work
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)

    rows = [r for r in read_jsonl(work / "pretrain" / "metrics.jsonl") if "loss" in r and "step" in r]
    left.plot(
        [r["step"] for r in rows], [r["loss"] for r in rows], color="tab:gray", label="masked-patch loss"
    )
    left.set_yscale("log")
    left.set_xlabel("pre-training step")
    left.set_ylabel("loss (MSE, pixels in [0, 1]; log)")
    probes = sorted(
        (int(re.search(r"step-(\d+)", p.name).group(1)), json.loads(p.read_text()))
        for p in (work / "probe").glob("step-*.json")
    )
    twin = left.twinx()
    for name, colour in (("linear", "tab:blue"), ("knn", "tab:orange")):
        twin.plot([s for s, _ in probes], [r[name]["top1"] for _, r in probes], "o-", color=colour,
                  label=f"{name} probe top-1 (8 per class)")  # fmt: skip
    twin.set_ylabel("probe top-1 (held-out)")
    twin.set_ylim(0, 1)
    lines = left.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    left.legend(lines, [h.get_label() for h in lines], loc="upper right", fontsize=8)
    left.set_title("pre-training on unlabelled clips")

    counts = sorted(
        {int(m.group(1)) for p in work.glob("*-*.eval.json") if (m := re.search(r"-(\d+)\.eval", p.name))}
    )
    for kind, colour in (("pretrained", "tab:blue"), ("scratch", "tab:red")):
        have = [n for n in counts if (work / f"{kind}-{n}.eval.json").exists()]
        top1 = [json.loads((work / f"{kind}-{n}.eval.json").read_text())["top1"] for n in have]
        right.plot(
            have,
            top1,
            "o-",
            color=colour,
            label="after pre-training" if kind == "pretrained" else "from scratch",
        )
    right.set_xscale("log", base=2)
    right.set_xticks(counts, [str(n) for n in counts])
    right.set_xlabel("labelled clips per class")
    right.set_ylabel("fine-tuned top-1 (held-out)")
    right.set_ylim(0, 1)
    right.legend(fontsize=8)
    right.set_title("fine-tuning")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
