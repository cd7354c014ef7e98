"""The OpenAPI schema and Swagger UI, served by the app itself (assets local:
no CDN is assumed to be reachable)."""

import json
import re

from django.core.management import call_command


def test_the_schema_is_valid_openapi_without_warnings(tmp_path):
    out = tmp_path / "schema.json"
    call_command(
        "spectacular",
        "--validate",
        "--fail-on-warn",
        "--format",
        "openapi-json",
        "--file",
        str(out),
    )
    schema = json.loads(out.read_text())
    assert schema["openapi"].startswith("3.")
    assert "CompanyApiKey" in schema["components"]["securitySchemes"]


def test_the_schema_is_served_without_credentials(client, db):
    response = client.get("/api/v1/schema/", {"format": "json"})
    assert response.status_code == 200
    paths = json.loads(response.content)["paths"]
    assert "/api/v1/whatsapp/sessions/{company_id}/status" in paths
    assert "/api/v1/whatsapp/sessions/{company_id}/outbound/" in paths


def test_every_operation_documents_the_error_shape(client, db):
    schema = json.loads(client.get("/api/v1/schema/", {"format": "json"}).content)
    for path, operations in schema["paths"].items():
        if path == "/api/v1/health":
            continue
        for method, operation in operations.items():
            for code in ("401", "404"):
                content = operation["responses"][code]["content"]["application/json"]
                assert content["schema"]["$ref"].endswith("/Error"), (method, path, code)


def test_swagger_ui_is_served_with_local_assets(client, db):
    response = client.get("/api/v1/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any("swagger-ui-bundle" in a for a in assets), assets
    for asset in assets:
        assert asset.startswith("/"), f"{asset} is not served by the app"
    assert "cdn" not in html.lower()
    bundle = next(a for a in assets if "swagger-ui-bundle" in a)
    static = client.get(bundle)
    assert static.status_code == 200
    assert b"SwaggerUI" in b"".join(
        static.streaming_content if static.streaming else [static.content]
    )


def test_each_control_endpoint_has_its_own_summary(client, db):
    paths = json.loads(client.get("/api/v1/schema/", {"format": "json"}).content)["paths"]
    summaries = {
        action: paths[f"/api/v1/whatsapp/sessions/{{company_id}}/{action}"]["post"]["summary"]
        for action in ("start", "stop", "restart", "logout")
    }
    assert len(set(summaries.values())) == 4, summaries
    assert summaries["logout"].startswith("Log the device out")


def test_the_docs_address_without_a_slash_redirects(client, db):
    response = client.get("/api/v1/docs")
    assert response.status_code == 302
    assert response["Location"] == "/api/v1/docs/"
