"""The repair measurements of docs/repair.md on the organisms (held-out split n = 2,000, fit split 2,000).

``python probes/repair.py [--n 2000] [--fit-n 2000] [--config NAME ...] [--qwen]`` writes ``runs/repair/<config>/repair.json``
(+ safetensors, PNG) and copies the main figure to ``figures/repair_text-biased.png``. Fit ids are
``test-1-*`` (seed 1), held-out ids ``test-0-*`` (seed 0): disjoint streams.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: the text-biased main edit: k and the ablation strength chosen on a validation split (seed 2, n = 600; ``--tune``),
#: never on the held-out split
MAIN = dict(edit="zero", granularity="neurons", k=400, alpha=0.875)
#: the same rule on every organism, k chosen on the fit split: the largest size that lowers the fit accuracy by at
#: most half a point (``max_fit_drop``)
RULE = dict(edit="zero", granularity="neurons", alpha=0.875, max_fit_drop=0.005, ks=[50, 100, 200, 400, 600])
#: name -> (model, repair keyword arguments); "@text-biased" applies the text-biased ranking (labelled transferred)
CONFIGS = {
    "text-biased_fit-k": ("organism:text-biased", RULE),
    "balanced_fit-k": ("organism:balanced", RULE),
    "image-biased_fit-k": ("organism:image-biased", RULE),
    "text-biased_zero_neurons": ("organism:text-biased", dict(MAIN, ks=[50, 100, 200, 400, 600])),
    "text-biased_zero_neurons_full": ("organism:text-biased", dict(MAIN, alpha=1.0, ks=[400])),
    "balanced_zero_neurons": ("organism:balanced", dict(MAIN, ks=[400])),
    "image-biased_zero_neurons": ("organism:image-biased", dict(MAIN, ks=[400])),
    "balanced_zero_neurons@text-biased": (
        "organism:balanced",
        dict(MAIN, ks=[400], selection="text-biased_zero_neurons"),
    ),
    "text-biased_mean_neurons": ("organism:text-biased", dict(MAIN, edit="mean", ks=[400])),
    "text-biased_zero_heads": (
        "organism:text-biased",
        dict(edit="zero", granularity="heads", k=3, ks=[1, 2, 3, 6]),
    ),
    "text-biased_reweight_heads": (
        "organism:text-biased",
        dict(edit="reweight", granularity="heads", k=3, alpha=4.0, ks=[3]),
    ),
    "text-biased_steer_layers": (
        "organism:text-biased",
        dict(edit="steer", granularity="layers", k=1, alpha=4.0, ks=[1]),
    ),
    "text-biased_zero_layers_decomposition": (
        "organism:text-biased",
        dict(edit="zero", granularity="layers", source="decomposition", k=2, ks=[1, 2]),
    ),
}
#: the same rule on the Qwen2.5-VL organisms and their data set organism:shapes-varied (--qwen); they have 1,024 MLP
#: neurons, so the sizes start lower
QWEN_RULE = dict(RULE, ks=[25, 50, 100, 200, 400])
QWEN_CONFIGS = {
    f"{name}_fit-k": (f"organism:{name}", QWEN_RULE)
    for name in ("qwen-text-biased", "qwen-balanced", "qwen-image-biased")
}
#: the validation grid of --tune (k, alpha)
GRID = [(300, 1.0), (400, 1.0), (400, 0.9), (400, 0.875), (400, 0.85), (400, 0.8), (500, 0.8)]


def tune(fit) -> None:
    import mech
    from mech.measure.repair import repair
    from mech.prepare.data import load_data

    m = mech.load("organism:text-biased")
    val = load_data("organism:shapes", n=600, seed=2)
    for k, a in GRID:
        s = repair(m, fit, val, k=k, alpha=a, ks=[k], batch_size=200, n_boot=200).to_json()["selected"]
        print(
            f"validation k={k} alpha={a}",
            json.dumps(
                {g: round(s["accuracy"][g]["value"], 3) for g in ("prior_wrong", "prior_right", "unplanted")}
            ),
            flush=True,
        )


def main() -> None:
    import mech
    from mech.measure.repair import repair
    from mech.prepare.data import load_data

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--fit-n", type=int, default=2000)
    p.add_argument("--config", action="append", default=None, choices=list(CONFIGS) + list(QWEN_CONFIGS))
    p.add_argument(
        "--qwen", action="store_true", help="the rule on the Qwen organisms (organism:shapes-varied)"
    )
    p.add_argument("--out", default="runs/repair")
    p.add_argument("--tune", action="store_true", help="only the validation grid (seed 2) that chose MAIN")
    args = p.parse_args()
    data = "organism:shapes-varied" if args.qwen else "organism:shapes"
    fit = load_data(data, n=args.fit_n, seed=1)
    if args.tune:
        return tune(fit)
    held = load_data(data, n=args.n, seed=0)
    configs = QWEN_CONFIGS if args.qwen else CONFIGS
    models, done = {}, {}
    for name in args.config or list(configs):
        spec, kw = configs[name]
        kw = dict(kw)
        if "selection" in kw:
            kw["selection"] = done[kw["selection"]].selection
        m = models.setdefault(spec, mech.load(spec))
        t = time.time()
        r = done[name] = repair(m, fit, held, batch_size=250, **kw)
        out = Path(args.out) / name
        j = r.save(out)
        s, c = j["selected"], j["controls"]
        acc = {g: s["accuracy"][g]["value"] for g in ("all", "prior_wrong", "prior_right", "unplanted")}
        print(
            name,
            f"{time.time() - t:.0f}s",
            json.dumps(
                {
                    "acc": acc,
                    "ci_prior_wrong": s["accuracy"]["prior_wrong"]["ci95"],
                    "unedited": {g: j["unedited"]["accuracy"][g]["value"] for g in acc},
                    "controls": c,
                    "white": s["white_image"]["accuracy"]["value"],
                    "chance": s["white_image"]["chance"],
                    "opt_dev": s.get("options", {}).get("max_dev_uniform"),
                    "flips": s["flips"],
                    "k": j["k"],
                    "k_rule": j.get("k_rule"),
                }
            ),
            flush=True,
        )
        if name == "text-biased_fit-k":
            Path("figures").mkdir(exist_ok=True)
            shutil.copyfile(out / "repair.png", "figures/repair_text-biased.png")


if __name__ == "__main__":
    main()
