from app.fhir.compartments import patient_compartment_params, patient_compartment_types
from app.fhir.registry import default_registry


def test_observation_links_to_patient_through_subject_and_performer():
    assert patient_compartment_params("Observation") == ("subject", "performer")


def test_patient_is_linked_through_link_and_condition_through_patient():
    assert patient_compartment_params("Patient") == ("link",)
    assert patient_compartment_params("Condition")[0] == "patient"


def test_types_outside_the_compartment_have_no_params():
    assert patient_compartment_params("Binary") == ()
    assert patient_compartment_params("Organization") == ()
    assert patient_compartment_params("NoSuchType") == ()
    assert "Organization" not in patient_compartment_types()
    assert {"Observation", "Condition", "Invoice"} <= patient_compartment_types()


def test_every_compartment_param_is_a_reference_param_of_its_type():
    registry = default_registry()
    for rtype in patient_compartment_types() & registry.resource_types:
        for code in patient_compartment_params(rtype):
            param = registry.get(rtype, code)
            assert param is not None, (rtype, code)
            assert param.type == "reference", (rtype, code)
