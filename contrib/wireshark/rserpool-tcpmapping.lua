-- rserpool-tcpmapping.lua: Wireshark dissector for the RSerPool TCP mapping
-- (expired draft-ietf-rserpool-tcpmapping; project digest section 10).
--
-- Over TCP, ASAP/ENRP messages travel inside a small chunk shim:
--
--   Type (1) | Flags (1) | Length (2, header + value, no padding) | Value, zero-padded to 4
--
-- Chunk types: 0 DATA, 1 INIT, 3 ACK, 4 HEARTBEAT, 5 HEARTBEAT ACK.
-- The INIT each side sends first fixes the layout of *that side's* DATA headers
-- for the whole connection (T = no TSN, S = no stream/SSN, P = no PPID), so the
-- dissector remembers the INIT flags per TCP stream and direction.
-- DATA payloads with PPID 11 go to Wireshark's "asap" dissector, PPID 12 to
-- "enrp", anything else to "data".
--
-- Load with:  tshark -X lua_script:rserpool-tcpmapping.lua ...
-- or copy into the personal Lua plugins folder (Help > About > Folders).
-- See README.md next to this file.

local tcpmap = Proto("rserpool-tcpmap", "RSerPool TCP Mapping")

----------------------------------------------------------------------------
-- Constants
----------------------------------------------------------------------------

local DEFAULT_PORT = 3863 -- asap-tcp

local T_DATA, T_INIT, T_ACK, T_HB, T_HB_ACK = 0, 1, 3, 4, 5

local chunk_names = {
    [T_DATA] = "DATA",
    [T_INIT] = "INIT",
    [2] = "Reserved",
    [T_ACK] = "ACK",
    [T_HB] = "HEARTBEAT",
    [T_HB_ACK] = "HEARTBEAT ACK",
    [255] = "Reserved (extension)",
}

local INIT_T, INIT_S, INIT_P = 0x01, 0x02, 0x04
local DATA_U = 0x04

local PPID_ASAP, PPID_ENRP = 11, 12
local ppid_names = {
    [0] = "Unspecified",
    [PPID_ASAP] = "ASAP",
    [PPID_ENRP] = "ENRP",
}

local HB_INFO_TYPE = 1

----------------------------------------------------------------------------
-- Fields
----------------------------------------------------------------------------

local F = {
    type = ProtoField.uint8("rserpool-tcpmap.type", "Chunk Type", base.DEC, chunk_names),
    flags = ProtoField.uint8("rserpool-tcpmap.flags", "Chunk Flags", base.HEX),
    length = ProtoField.uint16("rserpool-tcpmap.length", "Chunk Length", base.DEC),
    padding = ProtoField.bytes("rserpool-tcpmap.padding", "Padding"),
    value = ProtoField.bytes("rserpool-tcpmap.value", "Chunk Value"),

    init_t = ProtoField.bool("rserpool-tcpmap.init.no_tsn", "T (no TSN in my DATA; no TSN in ACKs to me)", 8,
        nil, INIT_T),
    init_s = ProtoField.bool("rserpool-tcpmap.init.no_stream", "S (no Stream Identifier / SSN in my DATA)", 8, nil,
        INIT_S),
    init_p = ProtoField.bool("rserpool-tcpmap.init.no_ppid", "P (no PPID in my DATA)", 8, nil, INIT_P),
    init_reserved = ProtoField.uint8("rserpool-tcpmap.init.reserved", "Reserved flag bits", base.HEX, nil, 0xF8),
    init_hdr_len = ProtoField.uint8("rserpool-tcpmap.init.data_header_length", "Resulting DATA header length",
        base.DEC),

    data_u = ProtoField.bool("rserpool-tcpmap.data.unordered", "U (unordered, SSN ignored)", 8, nil, DATA_U),
    data_reserved = ProtoField.uint8("rserpool-tcpmap.data.reserved", "Reserved flag bits", base.HEX, nil, 0xFB),
    data_tsn = ProtoField.uint32("rserpool-tcpmap.data.tsn", "TSN", base.DEC),
    data_stream = ProtoField.uint16("rserpool-tcpmap.data.stream", "Stream Identifier", base.DEC),
    data_ssn = ProtoField.uint16("rserpool-tcpmap.data.ssn", "Stream Sequence Number", base.DEC),
    data_ppid = ProtoField.uint32("rserpool-tcpmap.data.ppid", "Payload Protocol Identifier", base.DEC, ppid_names),
    data_payload_len = ProtoField.uint16("rserpool-tcpmap.data.payload_length", "Payload length", base.DEC),
    data_init_frame = ProtoField.framenum("rserpool-tcpmap.data.init_frame", "Header layout from INIT in frame"),
    data_init_flags = ProtoField.uint8("rserpool-tcpmap.data.sender_init_flags", "Sender's INIT flags", base.HEX),

    ack_tsn = ProtoField.uint32("rserpool-tcpmap.ack.cum_tsn", "Cumulative TSN Ack", base.DEC),

    hb_type = ProtoField.uint16("rserpool-tcpmap.heartbeat.info_type", "Heartbeat Info Type", base.DEC,
        { [HB_INFO_TYPE] = "Heartbeat Info" }),
    hb_length = ProtoField.uint16("rserpool-tcpmap.heartbeat.info_length", "Heartbeat Info Length", base.DEC),
    hb_info = ProtoField.bytes("rserpool-tcpmap.heartbeat.info", "Heartbeat Information"),
}

tcpmap.fields = {
    F.type, F.flags, F.length, F.padding, F.value,
    F.init_t, F.init_s, F.init_p, F.init_reserved, F.init_hdr_len,
    F.data_u, F.data_reserved, F.data_tsn, F.data_stream, F.data_ssn, F.data_ppid,
    F.data_payload_len, F.data_init_frame, F.data_init_flags,
    F.ack_tsn,
    F.hb_type, F.hb_length, F.hb_info,
}

local E = {
    bad_length = ProtoExpert.new("rserpool-tcpmap.bad_length", "Chunk Length below the 4-byte header",
        expert.group.MALFORMED, expert.severity.ERROR),
    truncated = ProtoExpert.new("rserpool-tcpmap.truncated", "Chunk too short for its type",
        expert.group.MALFORMED, expert.severity.ERROR),
    no_init = ProtoExpert.new("rserpool-tcpmap.data_before_init",
        "DATA before the sender's INIT (not captured?): header layout assumed from preferences",
        expert.group.SEQUENCE, expert.severity.WARN),
    dup_init = ProtoExpert.new("rserpool-tcpmap.duplicate_init",
        "Second INIT in this direction: the flags are fixed by the first one",
        expert.group.PROTOCOL, expert.severity.ERROR),
    init_length = ProtoExpert.new("rserpool-tcpmap.init_length", "INIT Length must be 4",
        expert.group.MALFORMED, expert.severity.ERROR),
    ack_length = ProtoExpert.new("rserpool-tcpmap.ack_length", "ACK Length must be 4 or 8",
        expert.group.MALFORMED, expert.severity.ERROR),
    hb_tlv = ProtoExpert.new("rserpool-tcpmap.heartbeat_tlv", "Heartbeat Info TLV malformed",
        expert.group.MALFORMED, expert.severity.ERROR),
    reserved = ProtoExpert.new("rserpool-tcpmap.reserved_bits", "Reserved flag bits set",
        expert.group.PROTOCOL, expert.severity.NOTE),
    nonzero_pad = ProtoExpert.new("rserpool-tcpmap.nonzero_padding", "Padding is not zero",
        expert.group.PROTOCOL, expert.severity.NOTE),
    unknown = ProtoExpert.new("rserpool-tcpmap.unknown_type", "Unknown chunk type",
        expert.group.UNDECODED, expert.severity.WARN),
}
tcpmap.experts = {
    E.bad_length, E.truncated, E.no_init, E.dup_init, E.init_length, E.ack_length, E.hb_tlv,
    E.reserved, E.nonzero_pad, E.unknown,
}

----------------------------------------------------------------------------
-- Preferences
----------------------------------------------------------------------------

tcpmap.prefs.ports = Pref.range("TCP ports", tostring(DEFAULT_PORT),
    "TCP ports decoded as the RSerPool TCP mapping (replaces the bare-ASAP decoding of 3863)", 65535)
tcpmap.prefs.heuristic = Pref.bool("Heuristic detection", true,
    "Recognise TCP mapping connections on any port by their leading INIT chunk")
tcpmap.prefs.assumed_flags = Pref.uint("Assumed INIT flags", 0,
    "INIT flags (T=1, S=2, P=4) assumed for a direction whose INIT was not captured")
tcpmap.prefs.desegment = Pref.bool("Reassemble chunks spanning TCP segments", true,
    "Needs TCP's \"Allow subdissector to reassemble TCP streams\" too")

----------------------------------------------------------------------------
-- Per-connection state
----------------------------------------------------------------------------

-- directions[stream .. "/" .. src .. ":" .. port] = { flags = n, frame = n }
-- Filled on the first pass; later passes (and random access in the GUI) see
-- the complete table, and a DATA chunk compares its frame with the INIT's.
local directions = {}

local f_tcp_stream = Field.new("tcp.stream")

local function direction_key(pinfo)
    local stream = f_tcp_stream()
    local s = stream and tostring(stream.value) or "?"
    return s .. "/" .. tostring(pinfo.src) .. ":" .. tostring(pinfo.src_port)
end

function tcpmap.init()
    directions = {}
end

----------------------------------------------------------------------------
-- Helpers
----------------------------------------------------------------------------

local function round4(n)
    return n + (4 - n % 4) % 4
end

local function init_flags_text(f)
    local parts = {}
    if bit.band(f, INIT_T) ~= 0 then parts[#parts + 1] = "T" end
    if bit.band(f, INIT_S) ~= 0 then parts[#parts + 1] = "S" end
    if bit.band(f, INIT_P) ~= 0 then parts[#parts + 1] = "P" end
    if #parts == 0 then return "none" end
    return table.concat(parts, ",")
end

local function data_header_len(f)
    local n = 4
    if bit.band(f, INIT_T) == 0 then n = n + 4 end
    if bit.band(f, INIT_S) == 0 then n = n + 4 end
    if bit.band(f, INIT_P) == 0 then n = n + 4 end
    return n
end

-- Wireshark's own ASAP/ENRP dissectors. In some versions they are not
-- registered by name, so fall back to the handles SCTP uses for PPIDs 11/12.
-- Looked up lazily: other plugins may register after this script loads.
local payload_dissectors = nil

local function find_dissector(name, ppid)
    local ok, d = pcall(Dissector.get, name)
    if ok and d ~= nil then return d end
    local ok2, t = pcall(DissectorTable.get, "sctp.ppi")
    if ok2 and t ~= nil then return t:get_dissector(ppid) end
    return nil
end

local function handoff(ppid)
    if payload_dissectors == nil then
        payload_dissectors = {
            [PPID_ASAP] = find_dissector("asap", PPID_ASAP),
            [PPID_ENRP] = find_dissector("enrp", PPID_ENRP),
            data = Dissector.get("data"),
        }
    end
    return payload_dissectors[ppid] or payload_dissectors.data
end

-- Adds a short chunk summary to the Info column, then fences it so a
-- subdissector (ASAP/ENRP) appends instead of overwriting earlier chunks.
local function info(pinfo, text)
    pinfo.cols.info:append(text .. " ")
    pinfo.cols.info:fence()
end

----------------------------------------------------------------------------
-- One chunk. `tvb` holds exactly round4(length) bytes (or fewer when the
-- capture is cut short); returns nothing.
----------------------------------------------------------------------------

local function dissect_init(tvb, pinfo, tree, ctype, cflags, clen)
    info(pinfo, "INIT[" .. init_flags_text(cflags) .. "]")
    tree:append_text(string.format(" (flags %s, DATA header %d bytes)", init_flags_text(cflags),
        data_header_len(cflags)))
    tree:add(F.init_t, tvb(1, 1))
    tree:add(F.init_s, tvb(1, 1))
    tree:add(F.init_p, tvb(1, 1))
    local r = tree:add(F.init_reserved, tvb(1, 1))
    if bit.band(cflags, 0xF8) ~= 0 then r:add_proto_expert_info(E.reserved) end
    tree:add(F.init_hdr_len, data_header_len(cflags)):set_generated()
    if clen ~= 4 then tree:add_proto_expert_info(E.init_length) end

    local key = direction_key(pinfo)
    local d = directions[key]
    if not pinfo.visited and d == nil then
        directions[key] = { flags = cflags, frame = pinfo.number }
    elseif d ~= nil and d.frame ~= pinfo.number then
        tree:add_proto_expert_info(E.dup_init)
    end
end

local function dissect_data(tvb, pinfo, tree, root, ctype, cflags, clen)
    local d = directions[direction_key(pinfo)]
    local iflags
    if d ~= nil and d.frame <= pinfo.number then
        iflags = d.flags
        tree:add(F.data_init_frame, d.frame):set_generated()
    else
        iflags = tcpmap.prefs.assumed_flags
        tree:add_proto_expert_info(E.no_init)
    end
    tree:add(F.data_init_flags, iflags):append_text(" (" .. init_flags_text(iflags) .. ")"):set_generated()

    tree:add(F.data_u, tvb(1, 1))
    local r = tree:add(F.data_reserved, tvb(1, 1))
    if bit.band(cflags, 0xFB) ~= 0 then r:add_proto_expert_info(E.reserved) end

    local hlen = data_header_len(iflags)
    if clen < hlen then
        tree:add_proto_expert_info(E.truncated,
            string.format("DATA Length %d is shorter than its %d-byte header", clen, hlen))
        info(pinfo, "DATA(truncated)")
        return
    end

    local off = 4
    local summary = {}
    if bit.band(iflags, INIT_T) == 0 then
        local tsn = tvb(off, 4):uint()
        tree:add(F.data_tsn, tvb(off, 4))
        summary[#summary + 1] = "TSN=" .. tsn
        off = off + 4
    end
    if bit.band(iflags, INIT_S) == 0 then
        tree:add(F.data_stream, tvb(off, 2))
        tree:add(F.data_ssn, tvb(off + 2, 2))
        summary[#summary + 1] = "SID=" .. tvb(off, 2):uint()
        if bit.band(cflags, DATA_U) == 0 then
            summary[#summary + 1] = "SSN=" .. tvb(off + 2, 2):uint()
        else
            summary[#summary + 1] = "unordered"
        end
        off = off + 4
    end
    local ppid = 0
    if bit.band(iflags, INIT_P) == 0 then
        ppid = tvb(off, 4):uint()
        tree:add(F.data_ppid, tvb(off, 4))
        off = off + 4
    end
    summary[#summary + 1] = "PPID=" .. (ppid_names[ppid] or tostring(ppid))
    tree:append_text(" (" .. table.concat(summary, ", ") .. ")")

    local plen = clen - off
    tree:add(F.data_payload_len, plen):set_generated()
    info(pinfo, "DATA")
    if plen > 0 then
        -- The payload's tree goes beside the chunk (under the protocol root),
        -- so ASAP/ENRP show up as their own top-level protocols.
        handoff(ppid):call(tvb(off, plen):tvb(), pinfo, root)
    end
end

local function dissect_ack(tvb, pinfo, tree, ctype, cflags, clen)
    if clen == 8 then
        tree:add(F.ack_tsn, tvb(4, 4))
        tree:append_text(" (Cumulative TSN " .. tvb(4, 4):uint() .. ")")
        info(pinfo, "ACK(" .. tvb(4, 4):uint() .. ")")
    elseif clen == 4 then
        info(pinfo, "ACK")
    else
        tree:add_proto_expert_info(E.ack_length)
        info(pinfo, "ACK(bad length)")
    end
end

local function dissect_heartbeat(tvb, pinfo, tree, ctype, cflags, clen)
    info(pinfo, chunk_names[ctype])
    if clen < 8 then
        tree:add_proto_expert_info(E.hb_tlv, "No room for the Heartbeat Info TLV header")
        return
    end
    local ttype = tvb(4, 2):uint()
    local tlen = tvb(6, 2):uint()
    local t = tree:add(F.hb_type, tvb(4, 2))
    if ttype ~= HB_INFO_TYPE then t:add_proto_expert_info(E.hb_tlv, "Heartbeat Info TLV type is not 1") end
    local l = tree:add(F.hb_length, tvb(6, 2))
    if tlen < 4 or 4 + tlen > clen then
        l:add_proto_expert_info(E.hb_tlv, "Heartbeat Info Length does not fit the chunk")
        return
    end
    if tlen > 4 then tree:add(F.hb_info, tvb(8, tlen - 4)) end
end

local function dissect_chunk(tvb, pinfo, root)
    local ctype = tvb(0, 1):uint()
    local cflags = tvb(1, 1):uint()
    local clen = tvb(2, 2):uint()
    local name = chunk_names[ctype] or ("Unknown (" .. ctype .. ")")

    local item = root:add(tcpmap, tvb(), "RSerPool TCP Mapping " .. name .. " chunk")
    item:add(F.type, tvb(0, 1))
    item:add(F.flags, tvb(1, 1))
    local litem = item:add(F.length, tvb(2, 2))

    if clen < 4 then
        litem:add_proto_expert_info(E.bad_length)
        info(pinfo, name .. "(bad length)")
        return
    end
    if tvb:len() < clen then
        -- Only when the capture is cut short (snaplen) or reassembly is off.
        item:add_proto_expert_info(E.truncated, "Chunk extends past the captured data")
        info(pinfo, name .. "(truncated)")
        return
    end

    if ctype == T_INIT then
        dissect_init(tvb, pinfo, item, ctype, cflags, clen)
    elseif ctype == T_DATA then
        dissect_data(tvb, pinfo, item, root, ctype, cflags, clen)
    elseif ctype == T_ACK then
        dissect_ack(tvb, pinfo, item, ctype, cflags, clen)
    elseif ctype == T_HB or ctype == T_HB_ACK then
        dissect_heartbeat(tvb, pinfo, item, ctype, cflags, clen)
    else
        item:add_proto_expert_info(E.unknown)
        if clen > 4 then item:add(F.value, tvb(4, clen - 4)) end
        info(pinfo, name)
    end

    local padded = math.min(round4(clen), tvb:len())
    if padded > clen then
        local p = item:add(F.padding, tvb(clen, padded - clen))
        for i = clen, padded - 1 do
            if tvb(i, 1):uint() ~= 0 then
                p:add_proto_expert_info(E.nonzero_pad)
                break
            end
        end
    end
end

----------------------------------------------------------------------------
-- Stream handling: cut the TCP payload into chunks, asking TCP for more
-- bytes when a chunk continues in a later segment.
----------------------------------------------------------------------------

-- Bytes the chunk at `offset` occupies, padding included. A Length below 4
-- is a framing error; treat it as a bare header so dissection moves on.
local function chunk_span(tvb, offset)
    local clen = tvb(offset + 2, 2):uint()
    if clen < 4 then return 4 end
    return round4(clen)
end

local function dissect_stream(tvb, pinfo, tree)
    local total = tvb:len()
    local offset = 0
    local first = true
    while offset < total do
        local left = total - offset
        if left < 4 then
            if tcpmap.prefs.desegment and pinfo.can_desegment > 0 then
                pinfo.desegment_offset = offset
                pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
                break
            end
            local item = tree:add(tcpmap, tvb(offset), "RSerPool TCP Mapping (partial chunk header)")
            item:add_proto_expert_info(E.truncated, "Partial chunk header")
            break
        end
        local span = chunk_span(tvb, offset)
        if span > left and tcpmap.prefs.desegment and pinfo.can_desegment > 0 then
            pinfo.desegment_offset = offset
            pinfo.desegment_len = span - left
            break
        end
        if first then
            pinfo.cols.protocol = "RSerPool-TCP"
            pinfo.cols.info:clear_fence()
            pinfo.cols.info = ""
            first = false
        end
        local n = math.min(span, left)
        dissect_chunk(tvb(offset, n):tvb(), pinfo, tree)
        offset = offset + n
    end
    -- A subdissector may have set its own protocol name; show both.
    if not first then
        local p = tostring(pinfo.cols.protocol)
        if p ~= "RSerPool-TCP" and not p:find("RSerPool-TCP", 1, true) then
            pinfo.cols.protocol = "RSerPool-TCP/" .. p
        end
    end
    return offset
end

function tcpmap.dissector(tvb, pinfo, tree)
    return dissect_stream(tvb, pinfo, tree)
end

----------------------------------------------------------------------------
-- Heuristic: a connection starts with an INIT (type 1, Length 4, flags in
-- the low three bits), optionally followed by more plausible chunks. Streams
-- already seen are claimed for the whole conversation.
----------------------------------------------------------------------------

local function plausible_chunk(tvb, offset)
    local ctype = tvb(offset, 1):uint()
    local clen = tvb(offset + 2, 2):uint()
    if ctype == T_INIT then return clen == 4 and tvb(offset + 1, 1):uint() < 8 end
    if ctype == T_DATA then return clen >= 4 end
    if ctype == T_ACK then return clen == 4 or clen == 8 end
    if ctype == T_HB or ctype == T_HB_ACK then return clen >= 8 end
    return false
end

local function heuristic(tvb, pinfo, tree)
    if not tcpmap.prefs.heuristic or tvb:len() < 4 then return false end
    if tvb(0, 1):uint() ~= T_INIT or not plausible_chunk(tvb, 0) then return false end
    -- Check the chunks that follow in this segment too (cheap and much stricter).
    local offset = 4
    while offset + 4 <= tvb:len() do
        if not plausible_chunk(tvb, offset) then return false end
        offset = offset + chunk_span(tvb, offset)
    end
    pinfo.conversation = tcpmap
    dissect_stream(tvb, pinfo, tree)
    return true
end

tcpmap:register_heuristic("tcp", heuristic)

----------------------------------------------------------------------------
-- Registration: configurable ports, and "Decode As" via the tcp.port table.
----------------------------------------------------------------------------

local tcp_port_table = DissectorTable.get("tcp.port")
local registered_ports = nil

local function register_ports()
    if registered_ports ~= nil then tcp_port_table:remove(registered_ports, tcpmap) end
    registered_ports = tcpmap.prefs.ports
    tcp_port_table:add(registered_ports, tcpmap)
end

function tcpmap.prefs_changed()
    register_ports()
end

register_ports()
tcp_port_table:add_for_decode_as(tcpmap)
