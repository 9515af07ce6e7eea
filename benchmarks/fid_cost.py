"""What end-of-trial FID adds to a demo trial: seconds of training vs seconds of evaluation, side by
side in one run, for the smallest, a middle and the largest trial of the demo study.

    python benchmarks/fid_cost.py [--samples 256] [--extractor inception] [--out DIR]

Trials run in-process (no Ray, no MLflow: a real demo trial adds 7-15 s of start-up on top, so the
ratios here are upper bounds). The reference statistics are a one-time cost per dataset, printed
apart. The issue's bar: FID must not more than double a trial's time (ratio <= 2).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scaling.fid import load_extractor, reference_stats
from scaling.train import train
from search.driver import model_template, prepare_data
from search.grid import fixed_grid
from search.spec import load_spec, parse_spec, spec_to_toml_dict
from search.trial import StudyContext, eval_config, train_config

DEMO = Path(__file__).resolve().parents[1] / "search" / "studies" / "demo.toml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=256, help="generated images per trial")
    p.add_argument("--extractor", default="inception")
    p.add_argument("--out", default="/tmp/dit-fid-cost", help="output dir (dataset, stats)")
    args = p.parse_args()

    data = spec_to_toml_dict(load_spec(DEMO))
    data["output_dir"] = args.out
    data["trainer"]["caption_dropout"] = max(0.1, data["trainer"].get("caption_dropout", 0.0))
    data["eval"] = {**data.get("eval", {}), "fid": True, "fid_extractor": args.extractor,
                    "fid_samples": args.samples}
    spec = parse_spec(data, "demo + FID")
    info = prepare_data(spec, print)
    template = model_template(spec, info)
    trials = fixed_grid(spec, template)
    ctx = StudyContext(study="fid-cost", study_run_id="0" * 32, tracking_uri="", storage_path="",
                       spec=spec.model_dump(mode="json"), template=template,
                       train_urls=tuple(info.urls("train")), val_urls=tuple(info.urls("val")),
                       ood_urls=tuple(info.urls("ood")), dataset_root=str(info.root),
                       dataset_hash=info.content_hash)
    fid = eval_config(ctx).fid
    started = time.perf_counter()
    reference_stats(list(fid.reference_urls), fid.reference_samples,
                    load_extractor(fid.extractor, fid.extractor_path), cache_dir=fid.cache_dir,
                    dataset=fid.dataset, batch_size=fid.batch_size, log=print)
    ref_seconds = time.perf_counter() - started

    picks = [trials[0], trials[len(trials) // 2], trials[-1]]
    rows = []
    for trial in picks:
        cfg, _ = train_config(ctx, trial)
        started = time.perf_counter()
        final = train(cfg, lambda metrics, checkpoint: None)
        wall = time.perf_counter() - started
        rows.append((trial.key, trial.params, cfg.steps, wall - final["eval_seconds"],
                     final["fid_seconds"], final["eval_seconds"], final["fid"], wall))

    print(f"\nFID cost on demo trials: {args.samples} samples, {fid.steps} Euler steps, CFG "
          f"{fid.cfg_scale:g}, {args.extractor}; reference statistics ({fid.reference_samples} "
          f"images, once per dataset): {ref_seconds:.1f} s")
    print(f"{'trial':<24}{'N':>9}{'steps':>7}{'train s':>9}{'FID s':>8}{'eval s':>8}"
          f"{'FID':>8}{'ratio':>7}")
    for key, n, steps, train_s, fid_s, eval_s, value, wall in rows:
        print(f"{key:<24}{n:>9}{steps:>7}{train_s:>9.1f}{fid_s:>8.1f}{eval_s:>8.1f}"
              f"{value:>8.1f}{wall / train_s:>7.2f}")
    print("ratio = trial time with evaluation / without (train loop and validation loss)")


if __name__ == "__main__":
    main()
