"""Model files as .npz (numpy arrays in a zip), written byte-for-byte the same
for the same arrays (numpy's savez stamps the current time into the zip) and
atomically with the stage's other outputs (records.output_file), and read
without pickle."""

import io
import os
import zipfile

import numpy as np

from synthtrain.records import current_path, output_file


def save_arrays(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with output_file(path, "wb") as handle, zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in sorted(arrays.items()):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue(), zipfile.ZIP_DEFLATED)


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(current_path(path), allow_pickle=False) as archive:  # written earlier in this stage: still under its temporary name
        return {name: archive[name] for name in archive.files}
