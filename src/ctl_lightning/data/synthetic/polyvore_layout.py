"""Generated benchmark outfits written in the Polyvore Outfits layout (docs/DESIGN.md section 2).

Both splits go into one ``polyvore_outfits/`` folder, sharing ``images/`` and the item metadata, as in
the real dataset. Each split has its own outfits (disjoint test looks combine a hue and a scheme never
seen in training) and every item belongs to one outfit, so no item is shared across splits or parts.
The question files are made like the real ones: a compatibility file with each real outfit and one of
as many random items from other outfits; FITB with four candidates of the blank's category, the right
one at a random position.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctl_lightning.data.formats.polyvore import METADATA_FILE, PARTS
from ctl_lightning.data.synthetic import benchmark, world
from ctl_lightning.data.synthetic.questions import fitb_draws, random_outfits
from ctl_lightning.io import write_json

# (item_id, similarity class, planned item, look) of one item of a generated outfit
PolyvoreRow = tuple[str, str, "benchmark.PlannedItem", "world.Look"]
CATEGORY_IDS = {category: i for i, category in enumerate(sorted(world.ROLE))}


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _write_questions(folder: Path, part: str, tokens: list[list[str]], categories: list[list[str]], rng: np.random.Generator) -> None:
    lines = []
    for own, fake in zip(tokens, random_outfits([len(t) for t in tokens], rng)):
        lines += ["1 " + " ".join(own), "0 " + " ".join(tokens[o][k] for o, k in fake)]
    _write_lines(folder / f"compatibility_{part}.txt", lines)
    questions = []
    for (o, blank), wrong in fitb_draws(categories, rng):
        answers = [tokens[o][blank], *(tokens[w][k] for w, k in wrong)]
        questions.append(
            {
                "question": [t for k, t in enumerate(tokens[o]) if k != blank],
                "answers": [answers[i] for i in rng.permutation(len(answers))],
                "blank_position": blank + 1,
            }
        )
    write_json(folder / f"fill_in_blank_{part}.json", questions)


def write_polyvore(root: Path, drawn: dict[str, list[list[PolyvoreRow]]], parts: list[str], rng: np.random.Generator) -> None:
    """Write ``drawn[split][outfit]`` items, outfit ``i`` of every split going to part ``parts[i]``;
    also the planted styles and latent attributes of every item, keyed by its ``<set_id>_<index>``."""
    metadata = {}
    styles, attributes = ["product_key\tstyle"], ["\t".join(benchmark.ATTRIBUTE_COLUMNS)]
    for number, (split, outfits) in enumerate(drawn.items(), start=1):
        (root / split).mkdir(parents=True)
        set_ids = [f"{number}{i:07d}" for i in range(len(outfits))]
        tokens = [[f"{set_id}_{k}" for k in range(1, len(rows) + 1)] for set_id, rows in zip(set_ids, outfits)]
        categories = [[planned.category for _, _, planned, _ in rows] for rows in outfits]
        for part in PARTS:
            chosen = [i for i, p in enumerate(parts) if p == part]
            write_json(
                root / split / f"{part}.json",
                [
                    {"set_id": set_ids[i], "items": [{"item_id": row[0], "index": k} for k, row in enumerate(outfits[i], start=1)]}
                    for i in chosen
                ],
            )
            if part != "train":
                _write_questions(root / split, part, [tokens[i] for i in chosen], [categories[i] for i in chosen], rng)
        for outfit_tokens, rows in zip(tokens, outfits):
            for token, (item_id, style, planned, look) in zip(outfit_tokens, rows):
                metadata[item_id] = {
                    "semantic_category": planned.category,
                    "category_id": CATEGORY_IDS[planned.category],
                    "title": f"synthetic {planned.category.lower()}",
                }
                styles.append(f"{token}\t{style}")
                attributes.append(benchmark.attribute_line(token, planned, look))
    write_json(root / METADATA_FILE, metadata)
    _write_lines(root / "synthetic_styles.tsv", styles)
    _write_lines(root / benchmark.ATTRIBUTES_FILE, attributes)
