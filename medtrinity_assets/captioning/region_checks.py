"""Checks of what a description says about its region's geometry (image position, size, area, box
span, outline, containment and bordering) against the region's own mask, recomputed
from its RLE (:mod:`medtrinity_assets.captioning.evidence`), and against the measured diameter.
Each returns its issues (none: the claims hold); :mod:`medtrinity_assets.captioning.quality` reads
the claims and reports the checks."""

from __future__ import annotations

from medtrinity_assets.captioning.claims import horizontal_third, vertical_third
from medtrinity_assets.captioning.evidence import RegionFacts
from medtrinity_assets.captioning.inputs import CaptionInput
from medtrinity_assets.captioning.phrasing import is_outlined
from medtrinity_assets.captioning.reading import Said
from medtrinity_assets.captioning.wording import label_text


def position_issues(pos: list[tuple[str, str]], item: CaptionInput, facts: RegionFacts | None) -> list[str]:
    """Image-position claims against the thirds the mask lies in (the table's words when there is no
    mask); a whole-image region has no position, nor a region along an axis it spans most of."""
    if facts is not None and facts.whole:
        return ["image position claimed for a whole-image region"] if pos else []
    if facts is not None:
        h, v = facts.horizontal, facts.vertical
    else:
        h, v = horizontal_third(item.horizontal), vertical_third(item.vertical)
    issues: list[str] = []
    for axis, val in pos:
        if axis == "h" and h is not None and val != h:
            issues.append(f"image position: says horizontal {val}, measured {h}")
        elif axis == "v" and v is not None and val != v:
            issues.append(f"image position: says vertical {val}, measured {v}")
        elif axis == "c" and h is not None and v is not None and h != "centre" and v != "middle":
            issues.append(f"image position: says central, measured {v}/{h}")
        elif axis in ("h", "v") and (h if axis == "h" else v) is None:
            issues.append("image position claimed but not measured" if facts is None else
                          f"image position: says {'horizontal' if axis == 'h' else 'vertical'} {val}, "
                          "the region spans most of the image along it")
    return issues


def size_issues(said: Said, item: CaptionInput) -> list[str]:
    """Sizes only when a diameter was measured, and never above it (10% + 0.5 mm slack); the image's
    size in pixels as it is."""
    issues: list[str] = []
    for mm in said.sizes_mm:
        if item.longest_diameter_mm is None:
            issues.append("size in mm claimed but no physical size was measured")
            break
        if mm > item.longest_diameter_mm * 1.1 + 0.5:
            issues.append(f"size: says {mm:g} mm, longest measured diameter {item.longest_diameter_mm:g} mm")
    actual = (item.image_width, item.image_height)
    for claimed in said.pixel_sizes:
        if claimed != actual:
            issues.append(f"size: says the image is {claimed[0]} by {claimed[1]} pixels, it is {actual[0]} by {actual[1]}")
    return issues


def extent_issues(said: Said, item: CaptionInput, facts: RegionFacts | None) -> list[str]:
    """Area, box-span and outline claims against the mask; "no region was localised" only for a
    whole-image region; outline words as :func:`outline_issues` allows."""
    issues: list[str] = []
    whole = item.origin == "whole_image"
    if said.whole_image and not whole:
        issues.append("says no region was localised, but the region is localised")
    issues += outline_issues(list(said.outlines), item)
    areas, spans = said.areas, said.spans
    if facts is None or not (areas or spans):
        return issues
    if facts.whole:
        return [*issues, "area or extent claimed for a whole-image region"]
    truth = (facts.area_fraction or 0.0) * 100
    for bound, pct in areas:
        if (bound and truth >= pct) or (not bound and abs(pct - truth) > max(0.06, 0.051 * truth)):
            issues.append(f"area: says {'less than ' if bound else ''}{pct:g}%, mask covers {truth:.2f}%")
    box = [100 * v for v in facts.bbox_norm or ()]
    for x0, x1, y0, y1 in spans:
        if box and max(abs(x0 - box[0]), abs(x1 - box[2]), abs(y0 - box[1]), abs(y1 - box[3])) > 1.01:
            issues.append(f"box span: says {x0:g}-{x1:g}% x {y0:g}-{y1:g}%, mask spans "
                          f"{box[0]:.0f}-{box[2]:.0f}% x {box[1]:.0f}-{box[3]:.0f}%")
    return issues


#: outline words that mean the measured one ("elongated" is not "oval": an oval may be nearly round)
_SAME_OUTLINE = {"round": {"round", "circular"}}


def outline_issues(said: list[str], item: CaptionInput) -> list[str]:
    """Outline words against the measured one (``shape_word``): none for a box or a whole image, and
    none where no shape was measured (a region too small, or one of the classical fallback, whose
    edge is a threshold's)."""
    if not said:
        return []
    if not is_outlined(item):
        what = {"whole_image": "a whole image", "box": "a box"}.get(item.origin or "", f"a region of origin '{item.origin}'")
        return [f"outline shape claimed for {what}"]
    measured = (item.shape_word or "").lower()
    if not measured:
        return [f"outline: says {'/'.join(sorted(set(said)))}, no shape was measured"]
    wrong = sorted(set(said) - _SAME_OUTLINE.get(measured, {measured}))
    return [f"outline: says {'/'.join(wrong)}, measured {measured}"] if wrong else []


_NESTING = ("lies within", "encloses")


def nesting_issues(said: Said, item: CaptionInput, nested: set[tuple[str, str]] | None) -> list[str]:
    """"lies within" / "encloses" claims against the containment recomputed from the image's masks
    (or, for "lies within", the label map's enclosing label), "bordered by" / "borders" against the
    bordering recomputed from them, and a direction in the image against the centroids of the
    image's regions of that name (a name no region of the image has is left to the terms check); "one
    of two / several regions labelled" against the image's localised regions with that label."""
    if nested is None:
        return []
    inside = label_text(item.inside_label).lower()
    issues = []
    for relation, other in said.relation_claims():
        if (relation, other) in nested or (relation == "lies within" and other == inside):
            continue
        if relation.startswith("one of"):
            issues.append(f"label count: says it is {relation} regions labelled {other}, the image's regions disagree")
            continue
        kind = "bordering" if "border" in relation else "containment" if relation in _NESTING else "direction"
        if kind == "direction" and ("named", other) not in nested:
            continue
        issues.append(f"{kind}: says it {relation} the {other}, the masks disagree")
    return issues

