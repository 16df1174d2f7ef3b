"""``fedleak simulate CONFIG.yaml``: run the client side only, write the update and its stats."""
from __future__ import annotations

from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("simulate", help="simulate one client round; write update.safetensors and stats.json")
    p.add_argument("config", nargs="?", help="YAML config (defaults built in when omitted)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set data.size=64 (repeatable)")
    p.add_argument("--out", default=None, help="output folder (default: OUTPUT_DIR/simulate-...)")
    p.add_argument("--force", action="store_true",
                   help="start even if the estimated peak memory exceeds the available memory")
    return p


def main(args) -> int:
    import torch

    from fedleak.experiment.case import Case
    from fedleak.config.schema import load_config
    from fedleak.experiment.claim import claim_run_dir, release
    from fedleak.experiment.resources import check as check_memory
    from fedleak.io import COMPLETE_MARK, mark_complete, new_run_dir, write_json, write_text

    cfg = load_config(args.config, args.overrides)
    check_memory(cfg, force=args.force, stage="simulate")  # before anything is computed or written
    out = claim_run_dir(Path(args.out) if args.out else
                        new_run_dir(cfg.output.dir, f"simulate-{cfg.model.name}-{cfg.protocol.name}"), COMPLETE_MARK)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        case = Case(cfg)
        update = case.client_update()
        import yaml

        write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        from fedleak.experiment.capture import server_record

        update.save(out / "update.safetensors", server=server_record(case))  # as sent: sparse/quantised compactly
        write_json(out / "stats.json", {"seed": cfg.seed, "obfuscation": update.obfuscation, **update.stats})
        mark_complete(out)  # last: a folder without COMPLETE is not a result
    finally:
        release(out)
    s = update.stats
    line = (f"update: {s['num_parameters']:,} parameters, norm {s['sent_norm']:.4g} (raw {s['raw_norm']:.4g}), "
            f"{s['bits_per_parameter']:.3g} bits/param, nonzero {100 * s['nonzero_fraction']:.1f}%")
    if "privacy" in s:
        from fedleak.metrics.privacy_words import describe

        line += f", epsilon {describe(s['privacy']['epsilon'], s['privacy'].get('mechanism'))} (delta {s['privacy']['delta']:g})"
    print(line)
    size = (out / "update.safetensors").stat().st_size
    print(f"update.safetensors: {size:,} bytes as sent (dense float32: {4 * s['num_parameters']:,}); "
          f"attack it with: fedleak attack --update {out / 'update.safetensors'}")
    print(f"wrote {out}")
    return 0
