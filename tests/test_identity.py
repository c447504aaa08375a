"""The identity attack: gallery arithmetic (always) and the real recognizer on real faces
(when the optional `face` extra and celeba-6k are here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from imambig.attacks.identity import Gallery
from imambig.evaluation import face_recognizer
from imambig.stages.ingest import DecodeParams, decode_image

PEOPLE = 12
PHOTOS = 5  # per person: 4 in the gallery, 1 probe


class _Lookup:
    """A stand-in recognizer whose descriptor is the image's first pixel row: lets the
    gallery's top-1 / AUC arithmetic be checked exactly."""

    def descriptors(self, images: np.ndarray) -> np.ndarray:
        return images[:, 0, :, 0].astype(np.float64)


def test_gallery_names_the_nearest_identity_and_scores_chance_for_noise():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(PEOPLE, 8)) * 50 + 128
    people = np.repeat(np.arange(PEOPLE), 3)
    gallery_imgs = np.zeros((len(people), 8, 8, 3), np.uint8)
    gallery_imgs[:, 0, :, 0] = np.clip(centres[people] + rng.normal(size=(len(people), 8)), 0, 255)
    gallery = Gallery.build(_Lookup(), gallery_imgs, people)  # type: ignore[arg-type]
    assert gallery.chance == pytest.approx(1 / PEOPLE)

    probes = torch.zeros(PEOPLE, 3, 8, 8)
    probes[:, 0, 0, :] = torch.tensor(np.clip(centres, 0, 255) / 255, dtype=torch.float32)
    top1, auc = gallery.identify(probes, np.arange(PEOPLE))
    assert top1 == 1.0 and auc > 0.99
    # Probes that name the wrong person every time: top-1 0 and AUC under chance.
    top1, auc = gallery.identify(probes, (np.arange(PEOPLE) + 1) % PEOPLE)
    assert top1 == 0.0 and auc < 0.5


def _faces(celeba_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """PHOTOS aligned 64x64 faces of each of PEOPLE identities, decoded as ingest does."""
    table = [line.split() for line in (celeba_dir / "identity_CelebA.txt").read_text().splitlines()]
    by_person: dict[int, list[str]] = {}
    for name, person in sorted(table, key=lambda row: (int(row[1]), row[0])):
        by_person.setdefault(int(person), []).append(name)
    people = sorted(p for p, names in by_person.items() if len(names) >= PHOTOS)[:PEOPLE]
    params = DecodeParams(64, 64, 178, 16, 10**8)
    images, ids = [], []
    for person in people:
        for name in by_person[person][:PHOTOS]:
            data = (celeba_dir / "img_align_celeba" / name).read_bytes()
            images.append(decode_image(data, params))
            ids.append(person)
    return np.stack(images), np.asarray(ids)


@pytest.mark.skipif(not face_recognizer.available(),
                    reason="optional face recognizer not installed: pip install 'imambig[face]'")
def test_recognizer_names_real_faces_and_not_noise(celeba_dir: Path):
    images, ids = _faces(celeba_dir)
    probe = np.arange(len(ids)) % PHOTOS == 0
    gallery = Gallery.build(face_recognizer.FaceRecognizer(), images[~probe], ids[~probe])

    faces = torch.from_numpy(images[probe]).permute(0, 3, 1, 2).float() / 255
    top1, auc = gallery.identify(faces, ids[probe])
    assert top1 >= 0.75, top1  # the recognizer works at 64x64 (97.5 % on 20 people)
    assert auc >= 0.9, auc

    # A face-free image carries no identity: uniform noise scores at chance level.
    noise = torch.rand(faces.shape, generator=torch.Generator().manual_seed(0))
    top1, auc = gallery.identify(noise, ids[probe])
    assert top1 <= 3 / PEOPLE, top1
