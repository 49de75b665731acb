//! The TypeScript module of a hub with every kind of method: unary and
//! streaming server methods, client-to-server streams, a client contract
//! with a client result, serde renames, and names that TypeScript reserves.

use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tidings::{ClientStream, Context, HubError, hub, typescript::TypeScriptModule};
use ts_rs::TS;

/// A point on the board.
#[derive(Debug, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
struct Point {
    x_pos: f64,
    label: Option<String>,
}

#[derive(Debug, Serialize, TS)]
enum Shape {
    Dot(Point),
    Line { from: Point, to: Point },
}

#[tidings::client]
trait BoardClient {
    /// A shape was drawn.
    fn drawn(shape: &Shape, by: &str);
    #[client(name = "clear")]
    fn clear_board();
    /// Asks the client where it is.
    fn locate(prompt: &str) -> Point;
}

struct BoardHub;

#[hub(client = BoardClient)]
impl BoardHub {
    /// Draws a shape for everyone.
    async fn draw(&self, cx: &Context, shape: Point) -> Result<u64, HubError> {
        let shape = match shape.label {
            Some(_) => Shape::Dot(shape),
            None => Shape::Line {
                from: Point {
                    x_pos: 0.0,
                    label: None,
                },
                to: shape,
            },
        };
        cx.clients().all().drawn(&shape, "me").await?;
        Ok(1)
    }

    async fn delete(&self, new: String, r#class: u32) -> Vec<Point> {
        let _ = (new, r#class);
        Vec::new()
    }

    #[hub(stream)]
    async fn points(&self, count: u32) -> impl Stream<Item = Point> + use<> {
        let _ = count;
        futures_util::stream::empty()
    }

    async fn upload(&self, points: ClientStream<Point>) -> Result<usize, HubError> {
        drop(points);
        Ok(0)
    }
}

#[test]
fn the_module_covers_every_kind_of_method() {
    let module = TypeScriptModule::new::<BoardHub>()
        .header("Made by a test.")
        .render();
    let has = |text: &str| assert!(module.contains(text), "missing `{text}` in:\n{module}");

    has("// Generated from the Rust hub `BoardHub` by tidings. Do not edit.\n// Made by a test.\n");
    has("import type { HubConnection, IStreamResult, Subject } from \"@microsoft/signalr\";");
    // Types from ts-rs, serde renames honoured, each declared once, docs kept.
    has(
        "/**\n * A point on the board.\n */\nexport type Point = { xPos: number, label: string | null, };",
    );
    assert_eq!(module.matches("export type Point =").count(), 1);
    has("export type Shape = { \"Dot\": Point } | { \"Line\": { from: Point, to: Point, } };");
    // Server methods: invoke, send, stream, client-to-server streams;
    // u64 is a number, reserved words are renamed.
    has("  /**\n   * Draws a shape for everyone.\n   */\n  draw(shape: Point): Promise<number>;");
    has("  delete(new_: string, class_: number): Promise<Array<Point>>;");
    has("  upload(points: Subject<Point>): Promise<number>;");
    has("export interface BoardStream {\n  points(count: number): IStreamResult<Point>;\n}");
    has("      draw: (shape: Point) => connection.invoke<number>(\"Draw\", shape),");
    has("      draw: (shape: Point) => connection.send(\"Draw\", shape),");
    has("      points: (count: number) => connection.stream<Point>(\"Points\", count),");
    // The client contract: wire names, a client result.
    has("  drawn(shape: Shape, by: string): void | Promise<void>;");
    has("  clearBoard(): void | Promise<void>;");
    has("  locate(prompt: string): Point | Promise<Point>;");
    has(
        "export const boardClientMethods = {\n  drawn: \"Drawn\",\n  clearBoard: \"clear\",\n  locate: \"Locate\",\n} as const;",
    );
    has("export function boardConnection(connection: HubConnection): BoardConnection {");
}

#[test]
fn the_prefix_can_be_chosen() {
    let module = TypeScriptModule::new::<BoardHub>().name("paint").render();
    assert!(
        module.contains("export interface PaintInvoke {"),
        "{module}"
    );
    assert!(
        module.contains("export function paintConnection("),
        "{module}"
    );
}
