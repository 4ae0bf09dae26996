/* Tally tracker, served by the collector at /tracker.js; sets no cookies. Usage:
 * <script defer src="https://COLLECTOR/tracker.js" data-site="SITE_ID"></script>
 * Options: data-respect-dnt, data-hash (hash changes are page views), data-endpoint.
 * Clicks: data-tally-event="NAME", data-tally-prop-KEY="VALUE". API: tally.track(name, props),
 * tally.identify(id), tally.optOut(), tally.optIn(), or tally("track", name, props). */
(()=>{
const d=document,w=window,n=navigator,l=location,s=d.currentScript;
if(!s||(w.tally||{}).track)return; // loaded twice
const A=(e,a)=>e.getAttribute(a),H=(e,a)=>e.hasAttribute(a),
 site=A(s,"data-site"),hash=H(s,"data-hash"),
 dnt=H(s,"data-respect-dnt")&&(n.doNotTrack=="1"||w.doNotTrack=="1"),
 safe=f=>(...a)=>{try{return f(...a)}catch(e){}},
 L=(k,v)=>{try{const o=localStorage;return v?o.setItem(k,v):v===null?o.removeItem(k):o.getItem(k)}catch(e){}},
 id=(o,k)=>{try{o=w[o];let v=o.getItem(k);v||o.setItem(k,v=crypto.randomUUID());return v}catch(e){return""}},
 here=()=>hash?l.href:l.href.replace(/#.*/,"");
// The page's visible ms: shown, plus now - since while visible.
let end,cur,title,ref=d.referrer,shown=0,since=0;
try{end=A(s,"data-endpoint")||new URL("/v1/events",s.src).href}catch(e){}
const send=safe((type,props,url,t)=>{
 if(dnt||!site||!end||L("tally_ignore")=="true")return;
 const e={site_id:site,event_type:type,url:url||here(),referrer:ref,title:t||d.title,
  screen_width:screen.width,screen_height:screen.height,
  visitor_id:id("localStorage","tally_visitor"),session_id:id("sessionStorage","tally_session"),
  properties:props||{}},u=L("tally_user");
 if(u)e.user_id=u;
 const body=JSON.stringify(e);
 try{if(n.sendBeacon(end,body))return}catch(x){}
 fetch(end,{method:"POST",body,keepalive:true,headers:{"content-type":"application/json"}}).catch(()=>{});
});
const tick=h=>{const t=performance.now();if(since)shown+=t-since;since=!h&&d.visibilityState=="visible"?t:0},
 unload=h=>{tick(h);const t=Math.round(shown);if(t>0){shown=0;send("page_unload",{time_on_page:t},cur,title)}},
 view=safe(()=>{const u=here();if(u!=cur){if(cur){unload();ref=cur}cur=u;title=d.title;send("page_view")}}),
 text=e=>((e.tagName=="INPUT"?e.value:e.textContent)||"").replace(/\s+/g," ").trim().slice(0,100),
 on=(t,e,f,c)=>t.addEventListener(e,safe(f),c);
on(d,"click",v=>{
 let e=v.target.closest("[data-tally-event],button,input[type=button],input[type=submit]"),p;
 if(e){
  p={button_id:e.id||text(e)};
  for(const a of e.attributes)if(a.name.startsWith("data-tally-prop-"))p[a.name.slice(16).replace(/-/g,"_")]=a.value;
  return send(A(e,"data-tally-event")||"button_click",p);
 }
 if(!(e=v.target.closest("a[href]")))return;
 const u=new URL(e.href);
 if(/^https?:$/.test(u.protocol))send(H(e,"download")||
  /\.(pdf|zip|csv|xlsx?|docx?|pptx|txt|dmg|exe|msi|t?gz|rar|7z|mp[34]|mov|avi|wav|iso|apk)$/i.test(u.pathname)
  ?"file_download":u.host!=l.host?"outbound_click":"navigation_click",{destination:u.href,text:text(e)});
},1);
on(d,"visibilitychange",()=>d.visibilityState=="hidden"?unload():tick());
on(w,"pagehide",()=>unload(1));
on(w,"popstate",view);
if(hash)on(w,"hashchange",view);
for(const m of["pushState","replaceState"]){
 const f=history[m];
 history[m]=function(){const r=f.apply(this,arguments);view();return r};
}
const api={
  track:(m,p)=>{const o={};for(const k in p)if(/^(st|nu|bo)/.test(typeof p[k]))o[k]=p[k];send(""+m,o)},
  identify:u=>L("tally_user",u?""+u:null),
  optOut:()=>L("tally_ignore","true"),
  optIn:()=>L("tally_ignore",null)
 },
 q=(w.tally||{}).q,
 T=w.tally=safe((m,...a)=>api.hasOwnProperty(m)?api[m](...a):api.track(m,...a));
for(const k in api)T[k]=safe(api[k]);
try{for(const a of q||[])T(...a)}catch(e){}
tick();
view();
})();
