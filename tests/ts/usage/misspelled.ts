// Mistakes the generated types must catch: this file must NOT compile.

import * as signalR from "@microsoft/signalr";
import { chatConnection } from "../generated/chat.js";

const chat = chatConnection(new signalR.HubConnectionBuilder().withUrl("http://127.0.0.1/hubs/chat").build());

// A misspelled server method.
await chat.invoke.sendMesage("ann", "hello");

// A misspelled client method.
chat.on("recieveMessage", (user: string, message: string) => console.log(user, message));

// A wrong argument type.
await chat.invoke.joinRoom(42);

// A handler that expects the wrong type.
chat.on("roomUsers", (users: string) => console.log(users));
