# Independent computation (Python standard library only, not the crate) of the protocol-2 golden
# reply tags and frames in WIRE.md and tests/wire.rs: `python3 tests/golden_replies.py`.
import hmac, hashlib, struct
def varint(n):
    out=b''
    while True:
        b=n&0x7f; n>>=7
        if n: out+=bytes([b|0x80])
        else: return out+bytes([b])
def crc32c(data):
    crc=0xFFFFFFFF
    for b in data:
        crc^=b
        for _ in range(8):
            crc = (crc>>1) ^ (0x82F63B78 if crc&1 else 0)
    return crc^0xFFFFFFFF
assert crc32c(b"123456789")==0xE3069283
def cobs(data):
    out=bytearray(); blk=bytearray()
    for b in data:
        if b==0:
            out.append(len(blk)+1); out+=blk; blk=bytearray()
        else:
            blk.append(b)
            if len(blk)==254:
                out.append(255); out+=blk; blk=bytearray()
    out.append(len(blk)+1); out+=blk
    return bytes(out)
def frame(body):
    return b'\x00'+cobs(body+struct.pack('<I',crc32c(body)))+b'\x00'
key=bytes(range(32))
D=b"echojepa-cart-reply-v2"
def reply_tag(kind,nonce,counter,body,extra=b''):
    return hmac.new(key, D+bytes([0x4d,kind])+struct.pack('<I',nonce)+struct.pack('<Q',counter)+body+extra, hashlib.sha256).digest()
cmd_tag=hmac.new(key,b"echojepa-cart-privileged-v1"+struct.pack('<Q',5)+b'\x00\x01',hashlib.sha256).digest()
assert cmd_tag.hex()=="0df846fa3162a695d555273d9964c13a662b51c46b22804dfc2ed4b111884d0c"
nonce=0x01020304
# CommandResult{counter 5, Accepted} as reply 7, bound to the golden command's tag
cr=varint(5)+b'\x00'
t=reply_tag(8,nonce,7,cr,cmd_tag)
print("cr_tag",t.hex())
body=varint(3)+varint(8)+cr+varint(7)+t
f=frame(body)
print("cr_frame",len(f)," ".join("%02x"%b for b in f))
# HelloAck
s=lambda x: varint(len(x))+x
ack=b'\x02\x00'+varint(nonce)+s(b"cart-1")+s(b"fw-2.0")+b"BUILD001"+varint(41)+b'\x01\x01'
t2=reply_tag(0,nonce,0,ack)
print("ack_tag",t2.hex())
f2=frame(varint(0)+varint(0)+ack+varint(0)+t2)
print("ack_frame",len(f2)," ".join("%02x"%b for b in f2))
# Status
st=varint(1000)+varint(3)+b'\x00'+b'\x00'+b'\x01\x00'+varint(41)+varint(0)+varint(0)
t3=reply_tag(5,nonce,1,st)
print("status_tag",t3.hex())
