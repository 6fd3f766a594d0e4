"""Evaluation commands of the ``fraudstream`` CLI (tooling beside the service)."""

from __future__ import annotations

import click

from fraudstream.service.model import CATALOGUE


@click.command("compare")
@click.option("--n", "n", default=50_000, show_default=True, help="Synthetic transactions.")
@click.option("--delay", default=3_000, show_default=True, help="Label delay, in transactions.")
@click.option("--seed", default=7, show_default=True)
@click.argument("names", nargs=-1)
def compare_cmd(n: int, delay: int, seed: int, names: tuple[str, ...]) -> None:
    """Prequential comparison of catalogue models on a synthetic stream."""
    from fraudstream.evaluation.synthetic import compare

    unknown = [m for m in names if m not in CATALOGUE]
    if unknown:
        raise click.ClickException(f"unknown model(s): {', '.join(unknown)}")
    results = compare(list(names or CATALOGUE), n=n, delay=delay, seed=seed)
    click.echo(f"{'model':<16} {'roc_auc':>8} {'avg_prec':>8} {'learn_us':>9} {'score_us':>9}")
    for name, r in results.items():
        click.echo(
            f"{name:<16} {r['roc_auc']:>8.3f} {r['average_precision']:>8.3f} "
            f"{r['learn_us']:>9.1f} {r['score_us']:>9.2f}"
        )
