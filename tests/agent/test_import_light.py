from imports import heavy_modules_loaded_by


def test_import_edgekit_agent_does_not_import_torch_nncf_or_edgekit():
    statement = "import edgekit_agent, edgekit_agent.protocol"
    assert heavy_modules_loaded_by(statement, ("torch", "nncf", "edgekit", "openvino", "onnxruntime")) == []
