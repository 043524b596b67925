"""The fixtures the official MCP conformance suite expects a server to offer.

`npx @modelcontextprotocol/conformance server --url .../mcp` calls tools, reads resources and
gets prompts by fixed names and checks their exact shapes. `install_fixtures()` adds them to
our server; `build_server()` calls it only when `MCP_CONFORMANCE_FIXTURES` is on (env
`MCP_CONFORMANCE_FIXTURES=true`), which `tests/test_conformance.py` does. Never turn it on in
production: the fixtures are for any logged-in client, and they ask the client to sample and
to elicit.

Everything here goes through the SDK's public registration API (`add_tool`, `resource`,
`prompt`, `completion`, the low-level `add_request_handler`), and the tools use the SDK
`Context` for progress, logging, sampling and elicitation, so the suite exercises the same
paths our own tools would.
"""

import base64
import io
import json
import wave
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import (
    AudioContent,
    CallToolResult,
    Completion,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from pydantic import Field

from mcpapp.server import DjangoMCPServer, as_async

# A 1x1 red PNG.
PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)
PNG_MIME = "image/png"
WAV_MIME = "audio/wav"
STEP_SECONDS = 0.05


def silent_wav_base64(*, frames: int = 800, rate: int = 8000) -> str:
    """A tenth of a second of 8 kHz mono silence, as a base64 WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(rate)
        wav.writeframes(b"\x80" * frames)
    return base64.b64encode(buffer.getvalue()).decode()


WAV_BASE64 = silent_wav_base64()


def text_result(text: str, *, is_error: bool = False) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=is_error)


# --- tools ------------------------------------------------------------------------------------


def test_simple_text() -> CallToolResult:
    """Return a simple text response."""
    return text_result("This is a simple text response for testing.")


def test_image_content() -> CallToolResult:
    """Return a small PNG image."""
    return CallToolResult(content=[ImageContent(type="image", data=PNG_BASE64, mime_type=PNG_MIME)])


def test_audio_content() -> CallToolResult:
    """Return a short WAV audio clip."""
    return CallToolResult(content=[AudioContent(type="audio", data=WAV_BASE64, mime_type=WAV_MIME)])


def test_embedded_resource() -> CallToolResult:
    """Return an embedded text resource."""
    resource = TextResourceContents(
        uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
    )
    return CallToolResult(content=[EmbeddedResource(type="resource", resource=resource)])


def test_multiple_content_types() -> CallToolResult:
    """Return text, an image and an embedded resource in one result."""
    resource = TextResourceContents(
        uri="test://mixed-content-resource",
        mime_type="application/json",
        text=json.dumps({"test": "data", "value": 123}),
    )
    return CallToolResult(
        content=[
            TextContent(type="text", text="Multiple content types test:"),
            ImageContent(type="image", data=PNG_BASE64, mime_type=PNG_MIME),
            EmbeddedResource(type="resource", resource=resource),
        ]
    )


async def test_tool_with_logging(ctx: Context) -> CallToolResult:
    """Send three log messages while running."""
    for step in ("Tool execution started", "Tool processing data", "Tool execution completed"):
        await ctx.info(step)
        await anyio.sleep(STEP_SECONDS)
    return text_result("Tool with logging executed successfully")


def test_error_handling() -> CallToolResult:
    """Always fail: a tool error result, not a protocol error."""
    return text_result("This tool intentionally returns an error for testing", is_error=True)


async def test_tool_with_progress(ctx: Context) -> CallToolResult:
    """Report progress 0, 50 and 100 of 100 while running."""
    for progress in (0, 50, 100):
        await ctx.report_progress(progress, 100)
        await anyio.sleep(STEP_SECONDS)
    return text_result("Tool with progress executed successfully")


async def test_sampling(prompt: str, ctx: Context) -> CallToolResult:
    """Ask the client's model to answer the prompt (sampling) and return its answer."""
    answer = await ctx.session.create_message(
        [SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
        max_tokens=100,
        related_request_id=ctx.request_id,
    )
    content = answer.content
    text = getattr(content, "text", None) or json.dumps(content.model_dump(mode="json", by_alias=True))
    return text_result(f"LLM response: {text}")


ELICITATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "username": {"type": "string", "description": "User's response"},
        "email": {"type": "string", "description": "User's email address"},
    },
    "required": ["username", "email"],
}

DEFAULTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {
            "type": "string",
            "description": "User status",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
    "required": [],
}

ENUMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "untitledSingle": {
            "type": "string",
            "description": "Select one option",
            "enum": ["option1", "option2", "option3"],
        },
        "titledSingle": {
            "type": "string",
            "description": "Select one option with titles",
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ],
        },
        "legacyEnum": {
            "type": "string",
            "description": "Select one option (legacy enumNames)",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {
            "type": "array",
            "description": "Select several options",
            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
        },
        "titledMulti": {
            "type": "array",
            "description": "Select several options with titles",
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            },
        },
    },
    "required": [],
}


async def elicit(ctx: Context, message: str, schema: dict[str, Any]) -> tuple[str, Any]:
    # The schemas above are sent verbatim: `ctx.elicit()` would derive one from a pydantic
    # model, and the suite checks exact shapes (defaults, oneOf, enumNames) that it cannot make.
    answer = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
    return answer.action, answer.content


async def test_elicitation(message: str, ctx: Context) -> CallToolResult:
    """Ask the user for a username and an email address (form elicitation)."""
    action, content = await elicit(ctx, message, ELICITATION_SCHEMA)
    return text_result(f"User response: <action: {action}, content: {json.dumps(content)}>")


async def test_elicitation_sep1034_defaults(ctx: Context) -> CallToolResult:
    """Elicit a form whose fields all carry defaults (SEP-1034)."""
    action, content = await elicit(
        ctx, "Please review and update the form fields with defaults", DEFAULTS_SCHEMA
    )
    return text_result(f"Elicitation completed: action={action}, content={json.dumps(content)}")


async def test_elicitation_sep1330_enums(ctx: Context) -> CallToolResult:
    """Elicit a form with every enum style: plain, titled, legacy enumNames, multi-select (SEP-1330)."""
    action, content = await elicit(ctx, "Please select options from the enum fields", ENUMS_SCHEMA)
    return text_result(f"Elicitation completed: action={action}, content={json.dumps(content)}")


async def test_reconnection(ctx: Context) -> CallToolResult:
    """Close this call's event stream before answering (SEP-1699): the client reconnects with
    Last-Event-ID and gets the answer from the event store."""
    await ctx.close_sse_stream()
    await anyio.sleep(STEP_SECONDS * 4)
    return text_result("Reconnection test completed successfully")


def json_schema_2020_12_tool(
    name: str | None = None, address: dict[str, Any] | None = None
) -> CallToolResult:
    """A tool whose input schema uses JSON Schema 2020-12 keywords ($schema, $defs,
    additionalProperties: false), which the server must pass on unchanged (SEP-1613)."""
    return text_result(json.dumps({"name": name, "address": address}))


JSON_SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False,
}


async def test_sleep(seconds: float) -> CallToolResult:
    """Not the suite's: sleep for `seconds` (at most 30), then say so. The drain and fault tests
    use it as a call that is still running when a worker stops."""
    await anyio.sleep(max(0.0, min(seconds, 30.0)))
    return text_result(f"slept {seconds:g} s")


TOOLS = (
    test_simple_text,
    test_image_content,
    test_audio_content,
    test_embedded_resource,
    test_multiple_content_types,
    test_tool_with_logging,
    test_error_handling,
    test_tool_with_progress,
    test_sampling,
    test_elicitation,
    test_elicitation_sep1034_defaults,
    test_elicitation_sep1330_enums,
    test_reconnection,
    json_schema_2020_12_tool,
    test_sleep,
)

# --- prompts ----------------------------------------------------------------------------------


def test_simple_prompt() -> list[dict[str, Any]]:
    """A simple prompt without arguments."""
    return [{"role": "user", "content": {"type": "text", "text": "This is a simple prompt for testing."}}]


def test_prompt_with_arguments(
    arg1: Annotated[str, Field(description="First test argument")],
    arg2: Annotated[str, Field(description="Second test argument")],
) -> list[dict[str, Any]]:
    """A prompt with two required arguments."""
    text = f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"
    return [{"role": "user", "content": {"type": "text", "text": text}}]


def test_prompt_with_embedded_resource(
    resourceUri: Annotated[str, Field(description="URI of the resource to embed")],  # the suite's name
) -> list[dict[str, Any]]:
    """A prompt that embeds a resource."""
    resource = {
        "uri": resourceUri,
        "mimeType": "text/plain",
        "text": "Embedded resource content for testing.",
    }
    return [
        {"role": "user", "content": {"type": "resource", "resource": resource}},
        {"role": "user", "content": {"type": "text", "text": "Please process the embedded resource above."}},
    ]


def test_prompt_with_image() -> list[dict[str, Any]]:
    """A prompt that carries an image."""
    return [
        {"role": "user", "content": {"type": "image", "data": PNG_BASE64, "mimeType": PNG_MIME}},
        {"role": "user", "content": {"type": "text", "text": "Please analyze the image above."}},
    ]


PROMPTS = (
    test_simple_prompt,
    test_prompt_with_arguments,
    test_prompt_with_embedded_resource,
    test_prompt_with_image,
)

COMPLETIONS = ("test1", "test2", "test3")


def install_resources(server: MCPServer) -> None:
    @server.resource(
        "test://static-text",
        name="static-text",
        description="A static text resource for testing",
        mime_type="text/plain",
    )
    def static_text() -> str:
        return "This is the content of the static text resource."

    @server.resource(
        "test://static-binary",
        name="static-binary",
        description="A static binary resource (a PNG image) for testing",
        mime_type=PNG_MIME,
    )
    def static_binary() -> bytes:
        return base64.b64decode(PNG_BASE64)

    @server.resource(
        "test://watched-resource",
        name="watched-resource",
        description="A resource clients can subscribe to",
        mime_type="text/plain",
    )
    def watched_resource() -> str:
        return "Watched resource content."

    @server.resource(
        "test://template/{id}/data",
        name="template-data",
        description="A resource template with an id parameter",
        mime_type="application/json",
    )
    def template_data(id: str) -> str:
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


def install_fixtures(server: DjangoMCPServer) -> None:
    """Add the conformance suite's tools, resources, templates, prompts and handlers.

    Besides what MCPServer registers by itself, the suite needs `logging/setLevel` (so the
    server declares the logging capability; levels are accepted and every message is sent),
    `resources/subscribe` and `resources/unsubscribe` (accepted; the fixtures never change)
    and `completion/complete` (values for the prompt's `arg1`).
    """
    for tool in TOOLS:
        # Sync fixtures run in the server's tool threads, as our own tools do.
        server.add_tool(as_async(tool), name=tool.__name__, description=tool.__doc__)
    # Served exactly as written: the suite checks that no 2020-12 keyword is lost.
    registered = server._tool_manager.get_tool(json_schema_2020_12_tool.__name__)
    assert registered is not None
    registered.parameters = JSON_SCHEMA_2020_12
    for prompt in PROMPTS:
        server.prompt(name=prompt.__name__, description=prompt.__doc__)(prompt)
    install_resources(server)

    @server.completion()
    async def complete(ref: Any, argument: Any, context: Any) -> Completion:
        values = [value for value in COMPLETIONS if value.startswith(argument.value)]
        return Completion(values=values, total=len(values), has_more=False)

    async def accept(ctx: Any, params: Any) -> EmptyResult:
        return EmptyResult()

    lowlevel = server._lowlevel_server
    lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, accept)
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, accept)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, accept)
