"""``fracdet dicom-node``: a DICOM Storage SCP beside a PACS. It receives radiographs, predicts
each study on the one inference path, and answers in DICOM — a TID 1500 Comprehensive 3D SR per
study and a Secondary Capture per image, in the same study — written to a folder and sent on with
C-STORE. Needs the ``dicomnode`` extra (pynetdicom, highdicom).

Modules: :mod:`~fracdet.dicomnode.scp` (the SCP, what it accepts and refuses),
:mod:`~fracdet.dicomnode.studies` (collecting a study), :mod:`~fracdet.dicomnode.results`
(the SR and SC objects; :func:`write_results` also serves ``fracdet predict``),
:mod:`~fracdet.dicomnode.forward` (C-STORE with an outbox and back-off)."""

from fracdet.dicomnode.results import write_results

__all__ = ["write_results"]
