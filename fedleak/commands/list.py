"""``fedleak list``: every registered model, protocol, obfuscation, attack, server scenario and enhancer."""
from __future__ import annotations


def add_parser(sub):
    return sub.add_parser("list", help="list registered models, protocols, obfuscations, attacks, server "
                                       "scenarios and enhancers")


def registries() -> dict:
    from fedleak.attacks import ATTACKS
    from fedleak.client.models import MODELS
    from fedleak.client.obfuscations import OBFUSCATIONS
    from fedleak.enhance import ENHANCERS
    from fedleak.server.scenarios import SCENARIOS

    return {"model": MODELS, "obfuscation": OBFUSCATIONS, "attack": ATTACKS, "server scenario": SCENARIOS,
            "enhancer": ENHANCERS}


def main(args) -> int:
    print("protocols:")
    print("  fedsgd        one gradient of the batch loss")
    print("  fedavg        tau local SGD steps at lr eta; sends theta0 - theta_tau (or divided by eta)")
    for kind, reg in registries().items():
        print(f"{kind}s:")
        for name in reg.names():
            print(f"  {name:<22}{reg.doc(name)}")
    return 0
