"""The OpenAPI schema documents the upload's text_field and the counts and format it answers."""
from drf_spectacular.generators import SchemaGenerator


def test_the_schema_documents_the_uploads_new_fields():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    upload = schema["paths"]["/api/v1/upload"]["post"]
    request = upload["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].split("/")[-1]
    response = upload["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    components = schema["components"]["schemas"]
    assert "text_field" in components[request]["properties"]
    assert {"documents_count", "format", "text_field", "lines_count", "size_bytes"} <= set(
        components[response]["properties"])
