"""Identifying values of a DICOM dataset: names, IDs, dates, UIDs, places (kept in memory only)."""

from __future__ import annotations

from typing import Any

from medtrinity_assets.privacy.identifiers import expand_person_name

#: Attributes whose values identify a patient, a clinician, a place or a study instance.
IDENTIFYING_KEYWORDS = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "OtherPatientIDs",
        "OtherPatientNames",
        "OtherPatientIDsSequence",
        "PatientBirthName",
        "PatientMotherBirthName",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "MedicalRecordLocator",
        "IssuerOfPatientID",
        "AccessionNumber",
        "StudyID",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "ReferringPhysicianName",
        "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers",
        "PerformingPhysicianName",
        "PhysiciansOfRecord",
        "NameOfPhysiciansReadingStudy",
        "OperatorsName",
        "RequestingPhysician",
        "ScheduledPerformingPhysicianName",
        "StationName",
        "DeviceSerialNumber",
        "RequestedProcedureID",
        "AdmissionID",
        "PerformedProcedureStepID",
        "ScheduledProcedureStepID",
        "StudyDate",
        "SeriesDate",
        "AcquisitionDate",
        "ContentDate",
        "AcquisitionDateTime",
        "InstanceCreationDate",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "MediaStorageSOPInstanceUID",
        "FrameOfReferenceUID",
        "ReferencedSOPInstanceUID",
        "PatientComments",
        "AdditionalPatientHistory",
        "EthnicGroup",
        "MilitaryRank",
        "BranchOfService",
        "RegionOfResidence",
        "CountryOfResidence",
        "ResponsibleOrganization",
        "ResponsiblePerson",
        "PersonName",
        "VerifyingObserverName",
        "ContentCreatorName",
    }
)
_IDENTIFYING_VRS = {"PN", "DA", "DT"}


def dicom_identifier_values(ds: Any) -> set[str]:
    """Every identifying value of a dataset (recursing into sequences), as non-empty strings.

    Covers :data:`IDENTIFYING_KEYWORDS`, every person name (VR PN) and every date (DA/DT).
    A person name also contributes its name tokens whatever their length ("Li^Na" adds "Li"
    and "Na"; a code such as "CT1" is not a name), see
    :func:`~medtrinity_assets.privacy.identifiers.expand_person_name`.
    """
    out: set[str] = set()

    def add(value: Any, is_name: bool) -> None:
        if value is None:
            return
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            for v in value:
                add(v, is_name)
            return
        text = str(value).strip()
        alnum = sum(ch.isalnum() for ch in text)
        if is_name and alnum >= 1:
            out.update(t for t in expand_person_name(text) if t.strip())
        elif alnum >= 2:
            out.add(text)

    def walk(d: Any) -> None:
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value or []:
                    walk(item)
                continue
            if elem.keyword in IDENTIFYING_KEYWORDS or elem.VR in _IDENTIFYING_VRS:
                try:
                    add(elem.value, elem.VR == "PN")
                except Exception:  # noqa: BLE001 - a malformed value is simply skipped
                    continue

    walk(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        walk(meta)
    return out
