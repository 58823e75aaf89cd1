"""Chapter 8 — captions for MNIST: text that says something the class label does not.

MNIST has labels, not text. To ask whether a text-conditioned model *listens*, each digit gets
captions that name its class and three attributes measured from its own pixels:

- **thickness** — ``2 A / P``, twice the ink mass over the ink's perimeter. A stroke of length
  ``L`` and width ``w`` has area ``L w`` and perimeter about ``2 L``, so ``2 A / P ~ w`` for any
  shape of stroke, loops included; it needs no skeleton (MNIST's strokes are 1-4 pixels wide, too
  few for a thinning algorithm to be stable). ``A`` is the summed intensity (continuous, so the
  tertiles have few ties), ``P`` the number of edges between pixels above and below one half.
- **slant** — the shear of the ink: ``cov(x, y) / var(y)`` from the intensity-weighted second
  moments, with ``y`` pointing up; positive leans right (the top is to the right of the bottom).
- **width** — ``4 std(x - slant * y)``, the horizontal spread *after* removing the shear.
  MNIST's digits were scaled to fit a 20 x 20 box keeping their aspect ratio, so nearly every
  digit is 20 pixels tall and height says nothing; the bounding-box width is an integer from 1 to
  20 (ties break tertiles) and grows with the slant, so minidiff uses the de-slanted second moment.

Each attribute is cut into **tertiles within each class** (the thresholds come from the first
50,000 training digits), so every class has every word in the same proportions: "narrow" is then
not a stand-in for "one". The low and high tertiles have words (thin / bold, left-leaning / right-
leaning, narrow / wide), slant's middle one too (upright); the middle thickness and width have
none, so a caption never claims what the digit is not. Captions come from templates with varied
word order and optional words, drawn with an explicit generator: the caption set is code, not a
file.
"""

import numpy as onp

ATTRIBUTES = ("thickness", "slant", "width")
# Per attribute, the word for tertile 0, 1, 2 (None: no word for that bin).
WORDS = {"thickness": ("thin", None, "bold"), "slant": ("left-leaning", "upright", "right-leaning"),
         "width": ("narrow", None, "wide")}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# How a slant reads after the noun ("a seven leaning right").
SLANT_AFTER = {0: "leaning left", 1: "standing upright", 2: "leaning right"}
# Every word a caption can hold (the comma is a word): the text encoder's vocabulary.
VOCABULARY = tuple(sorted({",", "a", "an", "and", "the", "digit", "leaning", "standing", "left",
                           "right"} | set(NUMBERS) | {str(d) for d in range(10)}
                          | {w for words in WORDS.values() for w in words if w is not None}))


# ----------------------------------------------------------------------------- attributes

def _ink(images):
    """``(N, 1, 28, 28)`` in ``[-1, 1]`` -> intensities ``(N, 28, 28)`` in ``[0, 1]``."""
    images = onp.asarray(images, dtype=float)
    if images.ndim != 4 or images.shape[1:] != (1, 28, 28):
        raise ValueError(f"`images` must have shape (N, 1, 28, 28) (got {images.shape})")
    return onp.clip((images[:, 0] + 1.0) / 2.0, 0.0, 1.0)


def thickness(images, threshold=0.5):
    """``2 A / P`` per image (module docstring): ``A`` the ink mass (summed intensity in
    ``[0, 1]``), ``P`` the number of edges between a pixel above ``threshold`` and one below.
    ``(N,)``, in pixels."""
    intensity = _ink(images)
    ink = intensity > threshold
    padded = onp.pad(ink, ((0, 0), (1, 1), (1, 1)))
    edges = (onp.sum(padded[:, 1:, :] != padded[:, :-1, :], axis=(1, 2))
             + onp.sum(padded[:, :, 1:] != padded[:, :, :-1], axis=(1, 2)))
    return 2.0 * intensity.sum(axis=(1, 2)) / onp.maximum(edges, 1)


def _moments(images):
    w = _ink(images)
    rows, cols = onp.mgrid[0:28, 0:28].astype(float)
    x, y = cols, -rows  # y points up
    mass = onp.maximum(w.sum(axis=(1, 2)), 1e-8)
    mx = (w * x).sum(axis=(1, 2)) / mass
    my = (w * y).sum(axis=(1, 2)) / mass
    dx, dy = x - mx[:, None, None], y - my[:, None, None]  # (N, 28, 28)
    return w, dx, dy, mass


def slant(images):
    """The shear ``cov(x, y) / var(y)`` of the ink (``y`` up): > 0 leans right. ``(N,)``."""
    w, dx, dy, mass = _moments(images)
    return (w * dx * dy).sum(axis=(1, 2)) / onp.maximum((w * dy * dy).sum(axis=(1, 2)), 1e-8)


def width(images):
    """``4 std(x - slant * y)``: the de-slanted horizontal spread, in pixels. ``(N,)``."""
    w, dx, dy, mass = _moments(images)
    s = slant(images)[:, None, None]
    return 4.0 * onp.sqrt((w * (dx - s * dy) ** 2).sum(axis=(1, 2)) / mass)


MEASURES = {"thickness": thickness, "slant": slant, "width": width}


def attributes(images):
    """``{name: (N,) values}`` for the three attributes."""
    return {name: MEASURES[name](images) for name in ATTRIBUTES}


def tertile_thresholds(images, labels):
    """``{name: (10, 2) array}``: per class, the 1/3 and 2/3 quantiles of each attribute."""
    values, labels = attributes(images), onp.asarray(labels)
    return {name: onp.stack([onp.quantile(v[labels == c], [1 / 3, 2 / 3]) for c in range(10)])
            for name, v in values.items()}


def bins(images, labels, thresholds):
    """``{name: (N,) ints in 0..2}``: each digit's tertile within its class."""
    values, labels = attributes(images), onp.asarray(labels)
    out = {}
    for name, v in values.items():
        lo, hi = thresholds[name][labels, 0], thresholds[name][labels, 1]
        out[name] = (v > lo).astype(int) + (v > hi).astype(int)
    return out


# ----------------------------------------------------------------------------- captions

def describe(label, attribute_bins, rng, p_mention=0.75):
    """One caption of a digit with class ``label`` and ``{name: bin}``: each attribute that has a
    word for its bin is mentioned with probability ``p_mention``, in a random order, through one of
    several templates. Returns ``(caption, mentioned)`` with ``mentioned = {name: bin}``."""
    named = [a for a in ATTRIBUTES if WORDS[a][attribute_bins[a]] is not None
             and rng.uniform() < p_mention]
    rng.shuffle(named)
    mentioned = {a: int(attribute_bins[a]) for a in named}
    number = NUMBERS[label] if rng.uniform() < 0.7 else str(label)
    adjectives = [WORDS[a][attribute_bins[a]] for a in named]
    template = rng.integers(0, 4)
    if template == 0 or not named:  # "a bold narrow seven"
        return _article(adjectives + [number]), mentioned
    if template == 1:  # "7, thin and narrow"
        return number + ", " + _listing(adjectives), mentioned
    if template == 2:  # "the digit two, upright and wide"
        return "the digit " + number + ", " + _listing(adjectives), mentioned
    # "a bold seven leaning right": the slant, if named, after the noun
    before = [WORDS[a][attribute_bins[a]] for a in named if a != "slant"]
    after = [SLANT_AFTER[attribute_bins["slant"]]] if "slant" in named else []
    return _article(before + [number] + after), mentioned


def _article(words):
    """``a`` or ``an`` before the phrase (``an eight``, ``an 8``, ``a bold eight``)."""
    return ("an " if words[0] in ("eight", "8") else "a ") + " ".join(words)


def _listing(words):
    """``thin``, ``thin and wide``, ``thin, upright and wide``."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def caption_dataset(images, labels, thresholds, rng, per_image=1, p_mention=0.75):
    """``per_image`` captions per digit: ``(captions, index, mentioned)`` — the caption strings,
    the digit each describes, and the attributes each names (``{name: bin}``)."""
    b, labels = bins(images, labels, thresholds), onp.asarray(labels)
    captions, index, mentioned = [], [], []
    for k in range(per_image * len(labels)):
        i = k % len(labels)
        c, m = describe(int(labels[i]), {a: b[a][i] for a in ATTRIBUTES}, rng, p_mention)
        captions.append(c)
        index.append(i)
        mentioned.append(m)
    return captions, onp.asarray(index), mentioned


def parse(caption):
    """``(label, {name: bin})`` that a caption of ``describe`` (or a user's prompt in its
    vocabulary) asks for; ``label`` is None when no digit is named."""
    words = caption.lower().replace(",", " ").split()  # "upright" also matches "standing upright"
    label = next((NUMBERS.index(w) if w in NUMBERS else int(w) for w in words
                  if w in NUMBERS or (w.isdigit() and len(w) == 1)), None)
    asked = {}
    for a in ATTRIBUTES:
        for b, word in enumerate(WORDS[a]):
            if word is not None and word in words:
                asked[a] = b
    for b, phrase in SLANT_AFTER.items():
        if phrase in " ".join(words):
            asked["slant"] = b
    return label, asked
